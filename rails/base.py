"""The rail interface: a rail judges content at one stage and returns a `Verdict` built by a named constructor."""

from __future__ import annotations

from enum import StrEnum
from typing import Protocol, runtime_checkable

import msgspec


class Stage(StrEnum):
    INPUT = "input"
    TOOL_RESULT = "tool_result"
    OUTPUT = "output"


class Action(StrEnum):
    ALLOW = "allow"
    MODIFY = "modify"
    BLOCK = "block"


class Verdict(msgspec.Struct, frozen=True):
    action: Action
    reason: str = ""
    content: str | None = None
    spans: tuple[tuple[int, int], ...] = ()  # where in the content it scored (character ranges), when the rail knows

    @classmethod
    def allow(cls) -> Verdict:
        return _ALLOW

    @classmethod
    def modify(cls, content: str, reason: str) -> Verdict:
        return cls(Action.MODIFY, reason, content)

    @classmethod
    def block(cls, reason: str, spans: tuple[tuple[int, int], ...] = ()) -> Verdict:
        return cls(Action.BLOCK, reason, None, spans)


_ALLOW = Verdict(Action.ALLOW)


class RailStream(Protocol):
    """One rail on one text that arrives in pieces (a streamed answer): see `Rail.stream`. `frontier`: the
    position in the text fed so far before which everything is decided (its length when nothing is pending).

    Optional, for a judge: `peek(text) -> int | None`, the frontier it would reach if `text` came next (more to
    follow), changing nothing; None when that would decide a match or it cannot say cheaply. Optional, for a
    masker: `pending`, the text it was given and has not passed on, and `lead`, the character every mask it
    writes starts with. With both, a judge downstream looks into the maskers' pending text (`StageStream`)."""

    frontier: int

    def feed(self, text: str, final: bool = False) -> tuple[str, Verdict]:
        """Take the next piece of the text (`final`: nothing follows; everything is then decided). Return the
        text the rail has now decided — every character before its frontier, not returned before, rewritten
        where the verdict is modify — and the verdict on it; a block ends the stream."""
        ...


@runtime_checkable
class Rail(Protocol):
    """Optional attributes: `modifies` (True: may rewrite the content; runs in the maskers' phase) and
    `local` (True: `check` is CPU work that never waits on I/O, so the pipeline calls it inline, without
    a task or a timeout: a timeout cannot interrupt CPU work, and a task per check costs more than most
    local checks).

    Optional method `stream() -> RailStream | None`: the rail on a text that grows piece by piece. Such a rail
    reports a *frontier*: the earliest position from which one of its patterns could still match, or match
    differently, once more text arrives (a partial match running into the end, a match whose end a
    word boundary or look-ahead still depends on); everything before it is decided and is passed on at once,
    judged (and masked) exactly as in the whole text. A rail without it (NeMo, LLM judges) makes the output
    filter fall back to fixed windows (`streaming.window` / `overlap`)."""

    name: str
    stage: Stage

    async def check(self, content: str) -> Verdict:
        """Judge one piece of content at this rail's stage."""
        ...
