"""Prompt-injection and jailbreak heuristics with a score and a threshold.

Signals (rails/builtin/signals.py), each with a weight, are summed (capped at 1.0): instruction-override phrasing,
data that addresses the model, claims to speak for its user or puts a task before its own, role-play / jailbreak
markers, attempts to extract the system prompt, fake chat-template role markers, invisible or bidirectional
Unicode, and (on output) markdown images or links that carry data out in a URL. They match on the text's normal
form (rails/builtin/normalize.py: homoglyphs folded, whitespace, line wrapping and markup noise taken out), so a
phrase wrapped over lines or spelled with look-alike letters reads as written plainly. Payloads hidden in base64,
hex or rot13 are decoded and scored again. The reason names the signals.

On a stream (`InjectionRail.stream`) the score is kept as the text arrives: a signal counts once its match is
decided (no text to come can change it: rails/builtin/partial.py), together with the need words seen so far;
a base64 / hex run once it ended; the rot13 reading from the first rot13'd trigger word on (the text before it
is read then, once). The normal form is made as the text arrives, and the frontier mapped back to the text. It is
never reset, so it is the plain score of everything decided so far, and at the end
of the stream exactly the plain score of the whole answer. Text is passed on up to the frontier only while that
score is below the threshold; the stream is blocked the first time it reaches it.
"""

from __future__ import annotations

import base64
import binascii
import codecs
import functools
import re
from collections.abc import Sequence

from ..base import RailStream, Stage, Verdict
from .normalize import NormalStream, fold, normal
from .partial import Unsupported
from .scanner import Patterns, Scanner, literals, patterns
from .signals import ADDRESSED, EXFILTRATION, FENCE, GROUP_CAP, SIGNALS, Readings, Signal, mentioned, total

__all__ = ["ADDRESSED", "EXFILTRATION", "SIGNALS", "InjectionRail", "Signal", "hidden_payloads", "readings", "score"]


ENCODED_BONUS = 0.2  # a payload hidden in base64 / hex / rot13 that reads as an attack is worse than a plain one
# rot13'd trigger words of the signals that weigh 0.4 or more, 5+ letters (shorter ones occur in plain text by chance)
_ROT13_NEEDS = tuple(
    sorted({codecs.encode(w, "rot13") for s in (*SIGNALS, ADDRESSED) if s.weight >= 0.4 for w in s.needs if len(w) > 4})
)
_ROT13_GATE = re.compile(literals(_ROT13_NEEDS))
_ROT13_REACH = max(map(len, _ROT13_NEEDS)) - 1  # a gate word runs at most this far back from its last character
_BASE64 = re.compile(r"(?<![A-Za-z0-9+/])[A-Za-z0-9+/]{20,}={0,2}(?![A-Za-z0-9+/=])")
_HEX = re.compile(r"\b(?:[0-9a-fA-F]{2}){12,}\b")
_LONG_TOKEN = re.compile(r"[A-Za-z0-9+/]{20}")  # base64 and hex payloads need a run this long


def _printable(raw: bytes) -> str | None:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return text if sum(c.isprintable() or c.isspace() for c in text) >= 0.9 * len(text) else None


def readings(text: str) -> Readings:
    folded = fold(text)
    return Readings(folded, normal(folded))


def hidden_payloads(text: str, normal_form: str | None = None) -> list[tuple[str, str]]:
    """(encoding, decoded text) for every base64 / hex run that decodes to readable text, and the
    rot13 reading of the text when its normal form holds a rot13'd trigger word of some signal."""
    normal_form = normal(text) if normal_form is None else normal_form
    found: list[tuple[str, str]] = []
    if not _LONG_TOKEN.search(text):
        return _rot13(text, normal_form)
    for match in _BASE64.finditer(text):
        decoded = _decode("base64", match.group())
        if decoded:
            found.append(("base64", decoded))
    for match in _HEX.finditer(text):
        decoded = _decode("hex", match.group())
        if decoded:
            found.append(("hex", decoded))
    return found + _rot13(text, normal_form)


def _decode(encoding: str, chunk: str) -> str | None:
    if encoding == "hex":
        return _printable(bytes.fromhex(chunk))
    try:
        return _printable(base64.b64decode(chunk + "=" * (-len(chunk) % 4), validate=True))
    except (binascii.Error, ValueError):
        return None


def payload_patterns() -> list[re.Pattern[str]]:
    return [_BASE64, _HEX]


def _rot13(text: str, normal_form: str) -> list[tuple[str, str]]:
    if _ROT13_GATE.search(normal_form):  # rot13'd trigger words of 5+ letters
        return [("rot13", codecs.decode(text, "rot13"))]
    return []


def score(text: str, signals: list[Signal], caps: dict[str, float] = GROUP_CAP) -> tuple[float, list[str]]:
    """(score capped at 1.0, names of the signals hit); decoded payloads add what they hid."""
    read = readings(text)
    hits = [(i, signal.weight) for i, signal in enumerate(signals) if signal.hit(read)]
    plain = {i for i, _ in hits}
    names = [signals[i].name for i, _ in hits]
    for encoding, decoded in hidden_payloads(read.written, read.normal):
        decoded_read = readings(decoded)
        for i, signal in enumerate(signals):
            if i not in plain and signal.hit(decoded_read):
                hits.append((i, signal.weight + ENCODED_BONUS))
                names.append(f"{encoding}:{signal.name}")
    return total(signals, hits, caps), names


def signals_for(stage: Stage) -> list[Signal]:
    """Tool results also count data that addresses the model; outputs, links that carry data out."""
    if stage == Stage.TOOL_RESULT:
        return [*SIGNALS, ADDRESSED]
    return [*SIGNALS, EXFILTRATION] if stage == Stage.OUTPUT else SIGNALS


class InjectionRail:
    """Blocks content whose injection score reaches `threshold` (0..1)."""

    modifies = False
    local = True  # check() is CPU work on the text: run inline, no timeout task

    def __init__(self, name: str, stage: Stage, threshold: float = 0.5) -> None:
        self.name, self.stage, self.threshold = name, stage, threshold
        self.signals = signals_for(stage)
        self.caps = {} if stage == Stage.TOOL_RESULT else GROUP_CAP  # data has no business directing the model

    async def check(self, content: str) -> Verdict:
        value, hits = score(content, self.signals, self.caps)
        if value >= self.threshold:
            return Verdict.block(f"injection score {value:.2f} >= {self.threshold:.2f} ({', '.join(hits)})")
        return Verdict.allow()

    def stream(self) -> RailStream | None:
        try:
            tables = _tables(tuple(self.signals))
        except Unsupported:
            return None
        return _ScoreStream(self, tables)


class _Tables:
    """The signals' regexes for streams: the lowercase ones (and code fences) on the normal form, the cased ones
    (then the base64 and hex runs) on the folded text as written."""

    def __init__(self, signals: Sequence[Signal]) -> None:
        self.signals = signals
        lowered = [(i, v) for i, s in enumerate(signals) for v in s.variants]
        cased = [(i, v) for i, s in enumerate(signals) for v in s.cased]
        self.lowered_owners = [(i, v.word_start, not signals[i].mentions) for i, v in lowered]
        self.cased_owners = [(i, v.word_start) for i, v in cased]
        self.fence = len(lowered)  # the index of the code-fence pattern, after the signals' own
        sources = tuple(v.stream_source() for _, v in lowered)
        self.lowered = patterns((*sources, (FENCE.pattern, FENCE.flags)))
        sources = tuple(v.stream_source() for _, v in cased)
        self.cased = patterns(sources)
        self.written = patterns(sources + tuple((p.pattern, p.flags) for p in payload_patterns()))


@functools.lru_cache(maxsize=8)
def _tables(signals: tuple[Signal, ...]) -> _Tables:
    return _Tables(signals)


class _Reading:
    """The signals on one reading of a stream (the text as written, or its rot13): which matched (decided, as
    many times as they need), and which have seen one of their need words (a signal counts when both)."""

    def __init__(self, tables: _Tables, written: Patterns) -> None:
        self.tables = tables
        self.normal = NormalStream()
        self.lowered, self.written = Scanner(tables.lowered), Scanner(written)
        self.counts: dict[int, int] = {}
        self.matched: set[int] = set()
        self.gated: set[int] = set()
        self.waiting: set[int] = set()  # matched, no need word seen yet
        self.pieces: list[str] = []  # the normal form so far, for need words
        self.fences: list[int] = []  # where code fences start in the normal form

    def feed(self, text: str, final: bool) -> list[tuple[int, str]]:
        """Read the next piece; return the base64 / hex runs it decided, as (0 base64 | 1 hex, run)."""
        folded = fold(text)
        normal_piece = self.normal.feed_folded(folded, final)
        self.pieces.append(normal_piece)
        decided = self.lowered.feed(normal_piece, final)
        tables = self.tables
        if decided:
            fence = tables.fence
            self.fences.extend(sorted(start for index, start, _, _ in decided if index == fence))
            for index, start, _, _ in decided:
                if index == fence:
                    continue
                signal, word_start, exempt = tables.lowered_owners[index]
                if word_start and _in_word(self.lowered.before(start)):
                    continue
                if not (exempt and self._mentioned(start)):
                    self._count(signal)
        runs = []
        decided = self.written.feed(folded, final)
        if decided:
            cased = len(tables.cased_owners)
            for index, start, _, group in decided:
                if index >= cased:
                    runs.append((index - cased, group))
                elif not (tables.cased_owners[index][1] and _in_word(self.written.before(start))):
                    self._count(tables.cased_owners[index][0])
        if self.waiting:
            window = self._recent(len(normal_piece) + 20)
            for signal in list(self.waiting):
                if any(word in window for word in tables.signals[signal].needs):
                    self.waiting.discard(signal)
                    self.gated.add(signal)
        return runs

    def _mentioned(self, start: int) -> bool:
        """As `Readings.mentioned` (every fence before `start` is decided once a match at `start` is)."""
        if len(self.pieces) > 1:
            self.pieces = ["".join(self.pieces)]
        return mentioned(self.pieces[0], start, self.fences)

    def _recent(self, size: int) -> str:
        """The last `size` characters of the normal form."""
        parts, count = [], 0
        for piece in reversed(self.pieces):
            parts.append(piece[-(size - count) :])
            count += len(parts[-1])
            if count >= size:
                break
        return "".join(reversed(parts))

    def _count(self, signal: int) -> None:
        self.counts[signal] = self.counts.get(signal, 0) + 1
        if self.counts[signal] >= self.tables.signals[signal].count:
            self._match(signal)

    def _match(self, signal: int) -> None:
        if signal in self.matched:
            return
        self.matched.add(signal)
        needs = self.tables.signals[signal].needs
        seen = "".join(self.pieces)
        self.pieces = [seen]
        if not needs or any(word in seen for word in needs):
            self.gated.add(signal)
        else:
            self.waiting.add(signal)

    def frontier(self) -> int:
        """In the text as written: the normal form's frontier mapped back, or the written scan's, the earlier."""
        lowered = self.normal.origin(self.lowered.frontier)
        written = self.written.frontier
        return lowered if lowered < written else written

    @property
    def hits(self) -> set[int]:
        return self.matched & self.gated

    def peek(self, text: str) -> int | None:
        """The `frontier` that feeding `text` (more to follow) would give, changing nothing; None when it would
        decide a match, take out noise, or start the rot13 reading."""
        added = self.normal.peek(text)
        if added is None or _ROT13_GATE.search(self._recent(20) + added):
            return None
        lowered, written = self.lowered.peek(added), self.written.peek(fold(text))
        if lowered is None or written is None:
            return None
        lowered = self.normal.origin_of(lowered)
        return lowered if lowered < written else written


def _in_word(char: str) -> bool:
    return char.isalnum() or char == "_"


class _ScoreStream:
    """The injection rail on a stream: see the module's docstring."""

    def __init__(self, rail: InjectionRail, tables: _Tables) -> None:
        self.rail, self.signals = rail, tables.signals
        self.tables = tables
        self.plain = _Reading(tables, tables.written)
        self.rot13: _Reading | None = None
        self.payloads: list[tuple[str, frozenset[int]]] = []
        self.before_rot13: list[str] = []  # the text so far, for the rot13 reading when it starts
        self.tail = ""
        self.pending, self.emitted = "", 0

    @property
    def frontier(self) -> int:
        plain = self.plain.frontier()
        return plain if self.rot13 is None else min(plain, self.rot13.frontier())

    def peek(self, text: str) -> int | None:
        """See `RailStream.peek`."""
        return self.plain.peek(text) if self.rot13 is None else None

    def feed(self, text: str, final: bool = False) -> tuple[str, Verdict]:
        self.pending += text
        plain = self.plain
        runs = plain.feed(text, final)
        if runs:
            self._decode(runs)
        if self.rot13 is None:
            self.before_rot13.append(text)
            added = plain.pieces[-1]
            window = self.tail + added
            self.tail = window[-20:]
            # a gate word not seen before ends in what was added: it starts at most _ROT13_REACH characters before
            if added and _ROT13_GATE.search(window, max(0, len(window) - len(added) - _ROT13_REACH)):
                self.rot13 = _Reading(self.tables, self.tables.cased)
                self.rot13.feed(codecs.encode("".join(self.before_rot13), "rot13"), final)
                self.before_rot13 = []
        else:
            self.rot13.feed(codecs.encode(text, "rot13"), final)
        if plain.matched or self.payloads or self.rot13 is not None:
            value, hits = self._score()
            if value >= self.rail.threshold:
                reason = f"injection score {value:.2f} >= {self.rail.threshold:.2f} ({', '.join(hits)})"
                return "", Verdict.block(reason)
        frontier = plain.frontier() if self.rot13 is None else self.frontier
        cut = frontier - self.emitted
        if cut <= 0:
            return "", _ALLOW
        out, self.pending, self.emitted = self.pending[:cut], self.pending[cut:], frontier
        return out, _ALLOW

    def _decode(self, runs: list[tuple[int, str]]) -> None:
        for index, run in runs:
            encoding = ("base64", "hex")[index]
            decoded = _decode(encoding, run)
            if decoded:
                read = readings(decoded)
                found = frozenset(i for i, s in enumerate(self.signals) if s.hit(read))
                if found:
                    self.payloads.append((encoding, found))

    def _score(self) -> tuple[float, list[str]]:
        """As `score` computes it, from what is decided."""
        signals, plain = self.signals, self.plain.hits
        hits = [(i, signals[i].weight) for i in sorted(plain)]
        names = [signals[i].name for i in sorted(plain)]
        decoded = [*self.payloads, *([("rot13", frozenset(self.rot13.hits))] if self.rot13 is not None else [])]
        for encoding, found in decoded:
            for i in sorted(found - plain):
                hits.append((i, signals[i].weight + ENCODED_BONUS))
                names.append(f"{encoding}:{signals[i].name}")
        return total(signals, hits, self.rail.caps), names


_ALLOW = Verdict.allow()
