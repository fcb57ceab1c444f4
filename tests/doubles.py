"""Test doubles for unit and integration tests of pure logic only. Never on the product's path."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence

import msgspec

from protocol.openai import (
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChunkChoice,
    Delta,
    FunctionCallDelta,
    ToolCallDelta,
    Usage,
)


def text_chunks(*pieces: str, finish: str = "stop", prompt_tokens: int = 7) -> list[ChatCompletionChunk]:
    """What an OpenAI-compatible engine streams for a plain text answer, usage last."""
    chunks = [_chunk(Delta(role="assistant", content=""))]
    chunks += [_chunk(Delta(content=p)) for p in pieces]
    chunks.append(_chunk(Delta(), finish))
    usage = Usage(prompt_tokens, len(pieces), prompt_tokens + len(pieces))
    chunks.append(ChatCompletionChunk(id="chatcmpl-test", model="upstream", choices=[], usage=usage))
    return chunks


def tool_call_chunks(name: str, argument_pieces: Sequence[str], call_id: str = "call_1") -> list[ChatCompletionChunk]:
    first = ToolCallDelta(index=0, id=call_id, type="function", function=FunctionCallDelta(name=name))
    chunks = [_chunk(Delta(role="assistant", tool_calls=[first]))]
    chunks += [
        _chunk(Delta(tool_calls=[ToolCallDelta(index=0, function=FunctionCallDelta(arguments=a))]))
        for a in argument_pieces
    ]
    chunks.append(_chunk(Delta(), "tool_calls"))
    return chunks


def calls_chunks(*calls: tuple[str, str, str], text: str = "") -> list[ChatCompletionChunk]:
    """Several calls (name, arguments, id), each streamed in two pieces, after optional text."""
    chunks = [_chunk(Delta(role="assistant", content=text or None))]
    for index, (name, arguments, call_id) in enumerate(calls):
        head = ToolCallDelta(index=index, id=call_id, type="function", function=FunctionCallDelta(name=name))
        chunks.append(_chunk(Delta(tool_calls=[head])))
        half = len(arguments) // 2
        for piece in (arguments[:half], arguments[half:]):
            part = ToolCallDelta(index=index, function=FunctionCallDelta(arguments=piece))
            chunks.append(_chunk(Delta(tool_calls=[part])))
    chunks.append(_chunk(Delta(), "tool_calls"))
    return chunks


def _chunk(delta: Delta, finish: str | None = None) -> ChatCompletionChunk:
    return ChatCompletionChunk(
        id="chatcmpl-test", model="upstream", choices=[ChunkChoice(delta=delta, finish_reason=finish)]
    )


class ScriptedEngine:
    """Streams a fixed script; can fail at a given chunk index; records requests and aborts."""

    def __init__(
        self,
        script: Sequence[ChatCompletionChunk] | None = None,
        *,
        fail_at: int | None = None,
        error: Exception | None = None,
        delay_s: float = 0.0,
        healthy: bool = True,
        name: str = "scripted#0",
    ) -> None:
        self.name = name
        self.script = list(script if script is not None else text_chunks("Hello", " world"))
        self.fail_at = fail_at
        self.error = error or RuntimeError("scripted failure")
        self.delay_s = delay_s
        self.healthy = healthy
        self.requests: list[ChatCompletionRequest] = []
        self.aborted: list[str] = []
        self.started = self.stopped = False

    async def start(self) -> None:
        self.started = True

    async def stop(self) -> None:
        self.stopped = True

    async def generate(self, request: ChatCompletionRequest, request_id: str) -> AsyncIterator[ChatCompletionChunk]:
        self.requests.append(request)
        for index, chunk in enumerate(self.script):
            if index == self.fail_at:
                raise self.error
            if self.delay_s:
                await asyncio.sleep(self.delay_s)
            yield msgspec.convert(msgspec.to_builtins(chunk), ChatCompletionChunk)  # fresh, as an engine's are

    async def abort(self, request_id: str) -> None:
        self.aborted.append(request_id)

    async def check_health(self) -> bool:
        return self.healthy
