"""SSE framing and delta accumulation.

Engines always stream; `Accumulator` folds the chunks into one `ChatCompletion` for clients that did
not ask for a stream, and holds tool-call deltas until the tool policy has judged each call.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Iterable

import msgspec

from protocol.openai import (
    ChatCompletion,
    ChatCompletionChunk,
    Choice,
    FunctionCall,
    ResponseMessage,
    ToolCall,
    ToolCallDelta,
    Usage,
)

DONE = b"data: [DONE]\n\n"
_encoder = msgspec.json.Encoder()


def sse_event(chunk: ChatCompletionChunk) -> bytes:
    return b"data: " + _encoder.encode(chunk) + b"\n\n"


class _PendingCall:
    __slots__ = ("arguments", "id", "name")

    def __init__(self) -> None:
        self.id = ""
        self.name = ""
        self.arguments: list[str] = []


class Accumulator:
    """Folds a stream of chunks (choice 0; Sentrail serves n=1) into a complete message."""

    def __init__(self) -> None:
        self.id = ""
        self.content: list[str] = []
        self.refusal: list[str] = []
        self.calls: dict[int, _PendingCall] = {}
        self.finish_reason: str | None = None
        self.usage: Usage | None = None
        self.created = 0

    def add(self, chunk: ChatCompletionChunk) -> None:
        self.id = self.id or chunk.id
        self.created = self.created or chunk.created
        if chunk.usage is not None:
            self.usage = chunk.usage
        for choice in chunk.choices:
            delta = choice.delta
            if delta.content:
                self.content.append(delta.content)
            if delta.refusal:
                self.refusal.append(delta.refusal)
            self.add_tool_calls(delta.tool_calls or ())
            if choice.finish_reason is not None:
                self.finish_reason = choice.finish_reason

    def add_tool_calls(self, deltas: Iterable[ToolCallDelta]) -> None:
        for call_delta in deltas:
            call = self.calls.setdefault(call_delta.index, _PendingCall())
            call.id = call_delta.id or call.id
            if call_delta.function is not None:
                call.name = call_delta.function.name or call.name
                if call_delta.function.arguments:
                    call.arguments.append(call_delta.function.arguments)

    def tool_calls(self) -> list[ToolCall]:
        return [
            ToolCall(id=c.id, function=FunctionCall(name=c.name, arguments="".join(c.arguments)))
            for _, c in sorted(self.calls.items())
        ]

    def result(self, model: str) -> ChatCompletion:
        message = ResponseMessage(
            content="".join(self.content) if self.content or not self.calls else None,
            tool_calls=self.tool_calls() or None,
            refusal="".join(self.refusal) or None,
        )
        return ChatCompletion(
            id=self.id,
            model=model,
            choices=[Choice(message=message, finish_reason=self.finish_reason)],
            usage=self.usage,
            created=self.created,
        )


async def prepend(first: bytes, rest: AsyncGenerator[bytes, None]) -> AsyncGenerator[bytes, None]:
    """`first`, then `rest`; closing this generator closes `rest` too (so the engine request aborts)."""
    try:
        yield first
        async for item in rest:
            yield item
    finally:
        await rest.aclose()
