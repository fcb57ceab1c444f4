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

    @classmethod
    def allow(cls) -> Verdict:
        return _ALLOW

    @classmethod
    def modify(cls, content: str, reason: str) -> Verdict:
        return cls(Action.MODIFY, reason, content)

    @classmethod
    def block(cls, reason: str) -> Verdict:
        return cls(Action.BLOCK, reason)


_ALLOW = Verdict(Action.ALLOW)


@runtime_checkable
class Rail(Protocol):
    """Optional attributes: `modifies` (True: may rewrite the content; runs in the maskers' phase) and
    `local` (True: `check` is CPU work that never waits on I/O, so the pipeline calls it inline, without
    a task or a timeout: a timeout cannot interrupt CPU work, and a task per check costs more than most
    local checks)."""

    name: str
    stage: Stage

    async def check(self, content: str) -> Verdict:
        """Judge one piece of content at this rail's stage."""
        ...
