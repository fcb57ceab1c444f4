"""Scanning a growing text with a set of patterns (rails/builtin/partial.py builds what decides it).

A `Scanner` runs a set of patterns over a growing text from each one's resume position, as `finditer` on the
whole text would, and reports the decided matches and the *frontier*: the earliest attempt not yet decided. No
match that starts before the frontier can change, whatever follows. One search over the undecided tail answers
the common case (nothing matched: the frontier is where some pattern is half-way through, typically the last
word), with a joint regex of every pattern's matches and touching rests (supersets, rewritten to start with a
character and grouped by it, so that a position costs a few character tests); only when it finds a match do
smaller groups, then single patterns, scan on their own.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from typing import Any

from .partial import Parsed, _joint, parse

HOLD_SCAN = 256  # a held tail longer than this is rescanned only once it grew by half: CPU stays linear


class _Group:
    """Some patterns of a set, searched jointly: when neither superset finds anything before the first
    position where one of them runs into the end, they are all decided up to there (the common case);
    otherwise the group's parts are searched, down to single patterns."""

    def __init__(self, parsed: list[Parsed], indices: list[int], fanout: int = 6, root: bool = True) -> None:
        self.indices = indices
        self.parts: list[_Group] = []
        self.both: re.Pattern[str] | None = None  # matches and (touching rests): a search finds the first of either
        self.any: re.Pattern[str] | None = None  # the matches alone
        if len(indices) == 1 and not root:
            return  # (a pattern alone at the root is searched jointly too: one search decides the common case)
        counts: dict[int, int] = {}
        for i in indices:
            counts[parsed[i].flags] = counts.get(parsed[i].flags, 0) + 1
        flags = max(counts, key=counts.__getitem__) & ~re.IGNORECASE  # IGNORECASE would hide first characters
        if any(parsed[i].flags & re.ASCII != flags & re.ASCII for i in indices):  # ASCII cannot be scoped off
            by_ascii = [[i for i in indices if parsed[i].flags & re.ASCII == a] for a in (0, re.ASCII)]
            self.parts = [_Group(parsed, chunk, fanout, root) for chunk in by_ascii if chunk]
            return
        joint, alone = _joint([parsed[i] for i in indices], flags)
        self.both = re.compile(joint, flags)
        self.any = re.compile(alone, flags) if root else None
        size = 1 if len(indices) <= 2 * fanout else -(-len(indices) // fanout)  # two levels above the patterns
        self.parts = [_Group(parsed, indices[i : i + size], fanout, False) for i in range(0, len(indices), size)]


def literals(words: Sequence[str]) -> str:
    """A regex for any of `words`, shaped as a tree of their letters (a search passes a position at the cost
    of one test of its character, where an alternation of the words tests each)."""
    tree: dict[str, Any] = {}
    for word in words:
        node = tree
        for char in word:
            node = node.setdefault(char, {})
        node[""] = {}

    def emit(node: dict[str, Any]) -> str:
        branches = [re.escape(char) + emit(child) for char, child in sorted(node.items()) if char]
        if not branches:
            return ""
        body = branches[0] if len(branches) == 1 else f"(?:{'|'.join(branches)})"
        return f"(?:{body})?" if "" in node else body

    return emit(tree)


@functools.lru_cache(maxsize=64)
def patterns(sources: tuple[tuple[str, int], ...]) -> Patterns:
    """`Patterns` for `sources`, built once per process (rails are rebuilt on every reload)."""
    return Patterns(sources)


class Patterns:
    """The regexes of one rail, compiled for streams. `context`: characters before the earliest undecided
    attempt a stream keeps for look-behinds and word boundaries."""

    def __init__(self, sources: Sequence[tuple[str, int]]) -> None:
        parsed = [parse(source, flags) for source, flags in sources]
        self.regexes = [p.regex for p in parsed]
        self.touching = [p.touching for p in parsed]
        self.root = _Group(parsed, list(range(len(parsed)))) if parsed else None
        self.context = max([0, *(p.behind for p in parsed)]) + 1  # +1: \b, (?m)^, a word-start check

    def __len__(self) -> int:
        return len(self.regexes)

    def scan(self, text: str, base: int, resume: list[int], final: bool) -> list[tuple[int, re.Match[str]]]:
        """Advance every pattern's `resume` (absolute; `text[0]` is at `base`) to its first undecided attempt
        (the end of `text` when `final`) and return the decided matches found on the way, as
        (pattern index, match on `text`)."""
        found: list[tuple[int, re.Match[str]]] = []
        if self.root is not None:
            self._scan(self.root, text, base, resume, found, final)
        return found

    def _scan(self, group: _Group, text: str, base: int, resume: list[int], found: list, final: bool) -> None:
        joint = group.any if final else group.both
        if joint is not None:
            pos = min(resume[i] for i in group.indices) - base
            match = joint.search(text, pos)
            if match is None or match.lastindex:  # nothing matched before the first undecided attempt
                edge = base + (len(text) if match is None else match.start())
                for index in group.indices:
                    resume[index] = max(resume[index], edge)
                return
        if group.parts:
            for part in group.parts:
                self._scan(part, text, base, resume, found, final)
            return
        if final:
            for index in group.indices:
                found.extend((index, m) for m in self.regexes[index].finditer(text, resume[index] - base))
                resume[index] = base + len(text)
            return
        for index in group.indices:
            regex, touching = self.regexes[index], self.touching[index]
            pos = resume[index] - base
            edge = _first(touching, text, pos)
            while (match := regex.search(text, pos)) is not None and match.start() < edge:
                found.append((index, match))
                pos = max(match.end(), match.start() + 1)
                if pos > edge:
                    edge = _first(touching, text, pos)
            resume[index] = base + edge


def _first(touching: re.Pattern[str] | None, text: str, pos: int) -> int:
    if touching is None:
        return len(text)
    match = touching.search(text, min(pos, len(text)))
    return len(text) if match is None else match.start()


class Scanner:
    """One stream's scan of a growing text with `patterns`. It keeps the text from `context` characters before
    the frontier on: `slice` reads what lies between the last frontier and the end."""

    def __init__(self, patterns: Patterns) -> None:
        self.patterns = patterns
        self.text, self.base = "", 0
        self.resume = [0] * len(patterns)  # per pattern, absolute; the `frontier` is never below any
        self.frontier = 0  # absolute: no match starting before it can change any more
        self._rescan = 0  # a long held tail: the length it must reach before the next scan
        self._context = patterns.context
        self._root = root = patterns.root
        self._both = root.both if root is not None else None  # the joint search that decides the common case

    @property
    def end(self) -> int:
        return self.base + len(self.text)

    def slice(self, start: int, end: int) -> str:
        return self.text[start - self.base : end - self.base]

    def before(self, position: int) -> str:
        """The character before `position`, or "" at the start of the text."""
        return self.text[position - self.base - 1] if position > 0 else ""

    def _grown(self, piece: str) -> tuple[str, int]:
        """Add `piece` to the text kept; (text, base). What no look-behind reads any more goes, now and then."""
        base, text, frontier = self.base, self.text, self.frontier
        if frontier - self._context - base > 64:
            text, base = text[frontier - self._context - base :], frontier - self._context
            self.base = base
        self.text = text = text + piece
        return text, base

    def extend(self, piece: str, frontier: int) -> None:
        """`feed(piece)` for a caller that knows that the piece decides no match and where the frontier lands
        (absolute): nothing is searched."""
        self._grown(piece)
        self.frontier, self._rescan = frontier, 0

    def peek(self, piece: str) -> int | None:
        """The frontier `feed(piece)` would reach (more text to follow), changing nothing; None when that
        would decide a match (or take more than the one joint search that answers the common case)."""
        root, text, base = self._root, self.text + piece, self.base
        if root is None or root.both is None:
            return None if root is not None else base + len(text)
        match = root.both.search(text, self.frontier - base)
        if match is None:
            return base + len(text)
        return base + match.start() if match.lastindex else None

    def feed(self, piece: str, final: bool = False) -> Sequence[tuple[int, int, int, str]]:
        """Add `piece`; the decided matches it made known, as (pattern index, start, end, text), absolute."""
        if not (piece or final):
            return ()
        frontier = self.frontier
        text, base = self._grown(piece)
        held = base + len(text) - frontier
        root = self._root
        if final:
            if root is not None and root.any is not None and root.any.search(text, frontier - base) is None:
                self.frontier = base + len(text)
                return ()
        else:
            if held > HOLD_SCAN and held < self._rescan:
                return ()
            both = self._both
            if both is not None:
                match = both.search(text, frontier - base)
                if match is None or match.lastindex:  # the common case: no match, all decided to the edge
                    self.frontier = edge = base + (len(text) if match is None else match.start())
                    self._rescan = 0 if edge > frontier or held <= HOLD_SCAN else held + held // 2
                    return ()
        resume = self.resume
        for index, at in enumerate(resume):
            resume[index] = max(at, frontier)
        found = self.patterns.scan(text, base, resume, final)
        self.frontier = min(resume) if resume else base + len(text)
        self._rescan = 0 if self.frontier > frontier or held <= HOLD_SCAN else held + held // 2
        return [(index, base + m.start(), base + m.end(), m.group()) for index, m in found]
