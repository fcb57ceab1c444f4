"""The engine interface: a narrow protocol (generate / abort / check_health) and the engine errors.

Engines speak the OpenAI wire types of `protocol.openai` (a leaf module): a request goes in, chunks
come out. Every engine streams; the gateway accumulates chunks for non-streaming clients.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol, runtime_checkable

from protocol.openai import ChatCompletionChunk, ChatCompletionRequest, SentrailError


class EngineError(SentrailError):
    """Base of engine failures."""

    error_type = "engine_error"


class EngineUnavailable(EngineError):
    """The engine cannot be reached, crashed, or broke off a stream."""

    error_type = "engine_unavailable"


class EngineRejected(EngineError):
    """The engine refused the request as invalid (its 4xx): the client's fault, not the engine's."""

    error_type = "invalid_request"


class Overloaded(EngineError):
    """No engine capacity and no room to wait: fail fast instead of queueing without bound."""

    error_type = "overloaded"

    def __init__(self, message: str, retry_after_s: int = 1) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


@runtime_checkable
class Engine(Protocol):
    """One replica that serves one model."""

    name: str

    async def start(self) -> None:
        """Bring the engine up; return when it can serve or raise `EngineUnavailable`."""

    async def stop(self) -> None:
        """Drain and release everything the engine holds."""

    def generate(self, request: ChatCompletionRequest, request_id: str) -> AsyncIterator[ChatCompletionChunk]:
        """Stream chunks for `request`; closing the iterator early aborts the request on the engine."""
        ...

    async def abort(self, request_id: str) -> None:
        """Stop generating for `request_id` (a no-op when it already finished)."""

    async def check_health(self) -> bool:
        """True when the engine can take requests now."""
        ...
