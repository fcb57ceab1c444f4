"""Size limits and deny lists."""

from __future__ import annotations

import re
from collections.abc import Sequence

from ..base import Stage, Verdict


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
