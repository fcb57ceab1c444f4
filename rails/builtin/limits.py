"""Size limits and deny lists. Both can run on a stream: a length limit decides every character at once (the
stream is blocked when it grows past the limit), a deny list holds back only a partial match of one of its
patterns or keywords running into the end of the text (rails/builtin/partial.py)."""

from __future__ import annotations

import re
from collections.abc import Sequence

from ..base import RailStream, Stage, Verdict
from .partial import Unsupported
from .scanner import Scanner, patterns


class LengthRail:
    """Blocks content longer than `max_chars`."""

    modifies = False
    local = True  # check() is CPU work on the text: run inline, no timeout task

    def __init__(self, name: str, stage: Stage, max_chars: int) -> None:
        self.name, self.stage, self.max_chars = name, stage, max_chars

    async def check(self, content: str) -> Verdict:
        if len(content) > self.max_chars:
            return Verdict.block(f"content is {len(content)} characters, over the limit of {self.max_chars}")
        return Verdict.allow()

    def stream(self) -> RailStream:
        return _LengthStream(self.max_chars)


class _LengthStream:
    def __init__(self, max_chars: int) -> None:
        self.max_chars, self.size = max_chars, 0

    @property
    def frontier(self) -> int:
        return self.size

    def feed(self, text: str, final: bool = False) -> tuple[str, Verdict]:
        self.size += len(text)
        if self.size > self.max_chars:
            return "", Verdict.block(f"content is {self.size} characters so far, over the limit of {self.max_chars}")
        return text, Verdict.allow()


class DenyRail:
    """Blocks content matching any regex or containing any keyword (case-insensitive, whole words)."""

    modifies = False
    local = True  # check() is CPU work on the text: run inline, no timeout task

    def __init__(self, name: str, stage: Stage, patterns: Sequence[str] = (), keywords: Sequence[str] = ()) -> None:
        self.name, self.stage = name, stage
        self._patterns = [(p, re.compile(p, re.IGNORECASE)) for p in patterns]
        self._keywords = [(k, re.compile(rf"(?<!\w){re.escape(k)}(?!\w)", re.IGNORECASE)) for k in keywords]

    async def check(self, content: str) -> Verdict:
        for source, compiled in (*self._patterns, *self._keywords):
            if compiled.search(content):
                return Verdict.block(f"matched deny rule {source!r}")
        return Verdict.allow()

    def stream(self) -> RailStream | None:
        rules = (*self._patterns, *self._keywords)
        try:
            scanner = Scanner(patterns(tuple((compiled.pattern, compiled.flags) for _, compiled in rules)))
        except (Unsupported, re.error, RecursionError):
            return None
        return _DenyStream(scanner, [source for source, _ in rules])


class _DenyStream:
    """Blocks as soon as a match is decided; passes on the text before the frontier."""

    def __init__(self, scanner: Scanner, sources: list[str]) -> None:
        self.scanner, self.sources, self.emitted = scanner, sources, 0

    @property
    def frontier(self) -> int:
        return self.scanner.frontier

    def peek(self, text: str) -> int | None:
        return self.scanner.peek(text)

    def feed(self, text: str, final: bool = False) -> tuple[str, Verdict]:
        found = self.scanner.feed(text, final)
        if found:
            return "", Verdict.block(f"matched deny rule {self.sources[found[0][0]]!r}")
        out = self.scanner.slice(self.emitted, self.scanner.frontier)
        self.emitted = self.scanner.frontier
        return out, Verdict.allow()
