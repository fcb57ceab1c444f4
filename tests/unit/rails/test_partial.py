"""Partial matching (rails/builtin/partial.py): what a stream's scan calls decided is what the whole text has,
whatever follows; scanned piece by piece it finds exactly what `finditer` finds on the whole text."""

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rails.builtin.detect import PII, SECRETS, regexes_of
from rails.builtin.injection import EXFILTRATION, SIGNALS, payload_patterns
from rails.builtin.partial import Unsupported, _emit, parse
from rails.builtin.scanner import HOLD_SCAN, Patterns, Scanner

TRICKY = [
    (r"abcdx|a", 0), (r"ab\b", 0), (r"ab$", 0), (r"ab\Z", 0), (r"\d+", 0), (r"a(?=bc)", 0), (r"x(?!yz)", 0),
    (r"a.{0,3}?b", re.DOTALL), (r"(?m)^sys\s*:", 0), (r"(?>ab|a)c", 0), (r"a++b", 0), (r"ab\Bc|a", 0),
    (r"(?<=key=)\w+", 0), (r"(?i)project nightingale", 0), (r"(?<!\w)x y(?!\w)", re.IGNORECASE), (r"a*", 0),
    (r"(?:ab){2,3}?c", 0), (r"[^a-c\]]+\.", 0),
]  # fmt: skip
BUILTIN = [(r.pattern.pattern, r.pattern.flags) for finder in (*PII.values(), *SECRETS.values())
           for r in regexes_of(finder)]  # fmt: skip
BUILTIN += [(v.pattern.pattern, v.pattern.flags) for s in [*SIGNALS, EXFILTRATION] for v in (*s.variants, *s.cased)]
BUILTIN += [(p.pattern, p.flags) for p in payload_patterns()]
ALPHABET = "ab cxyz019@.-+_\n():=/!AKIGBEQSsmtr[]"


def texts(alphabet: str = ALPHABET, size: int = 40):
    return st.text(alphabet, max_size=size)


def cut(text: str, cuts: list[int]) -> list[str]:
    points = sorted({c % (len(text) + 1) for c in cuts})
    return [text[a:b] for a, b in zip([0, *points], [*points, len(text)], strict=True)]


def scan_in_pieces(patterns: Patterns, pieces: list[str], final: bool) -> tuple[Scanner, list]:
    scanner, found = Scanner(patterns), []
    for piece in pieces:
        found += scanner.feed(piece)
    if final:
        found += scanner.feed("", final=True)
    return scanner, found


def whole(patterns: Patterns, text: str) -> list:
    return [(i, m.start(), m.end(), m.group()) for i, r in enumerate(patterns.regexes) for m in r.finditer(text)]


@pytest.mark.parametrize("source, flags", TRICKY + BUILTIN[:4])
@settings(max_examples=150, deadline=None)
@given(text=texts(), more=texts(size=12), cuts=st.lists(st.integers(0, 60), max_size=6))
def test_decided_matches_are_those_of_every_longer_text(source, flags, text, more, cuts):
    patterns = Patterns([(source, flags)])
    scanner, found = scan_in_pieces(patterns, cut(text, cuts), final=False)
    assert scanner.frontier <= len(text)
    expected = [f for f in whole(patterns, text + more) if f[1] < scanner.resume[0]]
    assert sorted(found) == expected
    assert [f for f in whole(patterns, text) if f[1] < scanner.resume[0]] == expected


@settings(max_examples=300, deadline=None)
@given(text=texts(size=60), more=texts(size=20), cuts=st.lists(st.integers(0, 80), max_size=8))
def test_builtin_patterns_stream_as_they_match_whole_texts(text, more, cuts):
    patterns = Patterns(BUILTIN)
    scanner, found = scan_in_pieces(patterns, cut(text, cuts), final=False)
    complete = whole(patterns, text + more)
    assert sorted(found) == sorted(f for f in complete if f[1] < scanner.resume[f[0]])
    _, found2 = scan_in_pieces(patterns, [*cut(text, cuts), more], final=True)
    assert sorted(found2) == sorted(complete)


@pytest.mark.parametrize("source, flags", TRICKY + BUILTIN)
@settings(max_examples=60, deadline=None)
@given(text=texts(size=60))
def test_the_rebuilt_pattern_matches_as_the_original(source, flags, text):
    parsed = parse(source, flags)
    rebuilt = re.compile(_emit(parsed.items), parsed.flags)
    assert [m.span() for m in rebuilt.finditer(text)] == [m.span() for m in re.compile(source, flags).finditer(text)]


JOINT = Patterns(BUILTIN)


@settings(max_examples=300, deadline=None)
@given(text=texts(size=60), start=st.integers(0, 60))
def test_when_the_joint_search_finds_no_match_first_every_pattern_is_decided_up_to_it(text, start):
    start = min(start, len(text))
    for group in [JOINT.root] if JOINT.root.both is not None else JOINT.root.parts:
        found = group.both.search(text, start)
        if found is not None and not found.lastindex:
            continue  # a match first: the patterns are searched one by one
        edge = len(text) if found is None else found.start()
        for index in group.indices:
            match = JOINT.regexes[index].search(text, start)
            assert match is None or match.start() >= edge
            touching = JOINT.touching[index]
            rest = touching.search(text, start) if touching else None
            assert rest is None or rest.start() >= edge


def test_prose_is_decided_up_to_its_last_word():
    scanner = Scanner(Patterns([(r.pattern.pattern, r.pattern.flags) for r in regexes_of(PII["EMAIL"])]))
    scanner.feed("Hello world, this is plain prose")
    assert scanner.frontier == len("Hello world, this is plain ")


def test_back_references_have_no_touching_form():
    with pytest.raises(Unsupported):
        Patterns([(r"(a)\1", 0)])


def test_a_long_held_tail_is_not_rescanned_on_every_piece():
    patterns = Patterns([(r"-----BEGIN KEY-----[\s\S]*?(?:-----END KEY-----|$)", 0)])
    scanner = Scanner(patterns)
    scanner.feed("-----BEGIN KEY-----" + "x" * HOLD_SCAN)
    scans = 0
    original = patterns.scan

    def counted(*args):
        nonlocal scans
        scans += 1
        return original(*args)

    patterns.scan = counted
    for _ in range(2000):
        scanner.feed("abcd")
    assert scanner.frontier == 0 and scans < 20  # rescanned as it grew by half: linear CPU in all
    found = scanner.feed("-----END KEY----- after", final=True)
    assert found and found[0][1] == 0
