"""An engine behind any OpenAI-compatible `/v1/chat/completions` (a vLLM or NIM server, local or remote).

The request is re-encoded from the validated struct (unknown client fields never travel), and the
upstream model name replaces the public one. A streaming request goes upstream as a stream with usage,
and so does one with tools (vLLM parses tool calls differently in its non-streaming path: a forced
call came back unparsed); any other request goes as a plain request, whose one JSON answer becomes
one chunk (rails and session fold chunks either way; one answer costs the gateway a fraction of the
CPU of ~20 parsed events). A stream is read to its end, so its connection is reused; closing it early
closes the connection, which is how vLLM and NIM learn to abort the request. The HTTP clients are in
`http1.py` (network) and `upstream.py` (their interface, and httpx for in-process transports).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import msgspec
import structlog

from protocol.openai import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChunkChoice,
    Delta,
    FunctionCallDelta,
    StreamOptions,
    ToolCallDelta,
    merge_text_chunks,
)

from .base import EngineError, EngineRejected, EngineUnavailable
from .http1 import Http1Upstream
from .upstream import HttpxUpstream, Upstream, UpstreamIOError, UpstreamResponse

log = structlog.get_logger("sentrail.engine")


class _UpstreamErrorDetail(msgspec.Struct):
    message: str = ""
    param: str | None = None
    code: int | str | None = None

    def is_client_fault(self) -> bool:
        """vLLM reports a request it cannot serve (a bad grammar, say) as code 400 inside the stream."""
        return isinstance(self.code, int) and 400 <= self.code < 500 and self.code not in (408, 429)


class _UpstreamError(msgspec.Struct):
    """An upstream's error body, read leniently (vLLM sends `code` as a number, OpenAI as a string)."""

    error: _UpstreamErrorDetail


_chunk_decoder = msgspec.json.Decoder(ChatCompletionChunk)
_completion_decoder = msgspec.json.Decoder(ChatCompletion)
_error_decoder = msgspec.json.Decoder(_UpstreamError)
_encoder = msgspec.json.Encoder()


class OpenAIEngine:
    """One OpenAI-compatible upstream; `upstream_model` is the name the upstream knows the model by.
    On the network it speaks HTTP/1.1 itself (`http1.py`); with a `transport` (in-process app, tests), httpx."""

    def __init__(
        self,
        name: str,
        base_url: str,
        upstream_model: str,
        api_key: str | None = None,
        connect_timeout_s: float = 5.0,
        transport: httpx.AsyncBaseTransport | None = None,
        read_timeout_s: float = 120.0,
    ) -> None:
        self.name = name
        self.base_url = base_url.rstrip("/")
        self.upstream_model = upstream_model
        self.api_key = api_key
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        # read: the longest silence allowed from a working engine (before the first token, between chunks);
        # past it the request fails (and fails over when nothing was streamed yet) instead of hanging
        self._upstream: Upstream = (
            HttpxUpstream(self.base_url, headers, connect_timeout_s, read_timeout_s, transport)
            if transport is not None
            else Http1Upstream(self.base_url, headers, connect_timeout_s, read_timeout_s)
        )
        self._streams: dict[str, UpstreamResponse] = {}

    def _open_client(self) -> None:
        """A stopped engine that is started again (a restart) gets a fresh connection pool."""
        self._upstream.open()

    async def start(self) -> None:
        self._open_client()
        if not await self.check_health():
            log.warning("engine_not_healthy_at_start", engine=self.name, url=self.base_url)

    async def stop(self) -> None:
        await self._upstream.close()

    async def check_health(self) -> bool:
        return await self._upstream.status("/v1/models", 2.0) == 200

    def upstream_body(self, request: ChatCompletionRequest) -> bytes:
        stream = _streams_upstream(request)
        options = StreamOptions(include_usage=True) if stream else None
        upstream = msgspec.structs.replace(request, model=self.upstream_model, stream=stream, stream_options=options)
        return _encoder.encode(upstream)

    async def generate(self, request: ChatCompletionRequest, request_id: str) -> AsyncIterator[ChatCompletionChunk]:
        body = self.upstream_body(request)
        headers = {"Content-Type": "application/json", "X-Request-Id": request_id}
        try:
            async with self._upstream.post("/v1/chat/completions", body, headers) as response:
                if response.status != 200:
                    raise _upstream_error(response.status, await response.read())
                self._streams[request_id] = response
                if not _streams_upstream(request):
                    yield _as_chunk(await response.read())
                    return
                done = False
                async for lines in response.lines():  # read to the end: the connection is then reused
                    arrived, failure = [], None
                    for line in lines:
                        if done or not line.startswith(b"data:"):
                            continue
                        data = line[5:].strip()
                        if data == b"[DONE]":
                            done = True
                            continue
                        try:
                            arrived.append(_decode_event(data))
                        except EngineError as exc:  # the events before an error event are passed on first
                            failure = exc
                            break
                    for chunk in merge_text_chunks(arrived):
                        yield chunk
                    if failure is not None:
                        raise failure
        except UpstreamIOError as exc:
            raise EngineUnavailable(f"engine {self.name} failed: {exc}") from exc
        finally:
            self._streams.pop(request_id, None)

    async def abort(self, request_id: str) -> None:
        response = self._streams.pop(request_id, None)
        if response is not None:
            await response.close()


def _decode_event(data: bytes) -> ChatCompletionChunk:
    try:
        return _chunk_decoder.decode(data)
    except msgspec.ValidationError:
        pass  # valid JSON but not a chunk: an error event, or garbage
    except msgspec.DecodeError:
        raise EngineUnavailable("engine sent an unreadable stream event") from None
    try:
        error = _error_decoder.decode(data).error
    except msgspec.MsgspecError:
        raise EngineUnavailable("engine sent an unreadable stream event") from None
    if error.is_client_fault():
        raise EngineRejected(error.message, error.param)
    raise EngineError(f"engine error during generation: {error.message}")


def _streams_upstream(request: ChatCompletionRequest) -> bool:
    return request.stream or bool(request.tools)


def _as_chunk(raw: bytes) -> ChatCompletionChunk:
    """A non-streaming answer as the one chunk that carries all of it."""
    try:
        completion = _completion_decoder.decode(raw)
    except msgspec.MsgspecError:
        raise EngineUnavailable("engine sent an unreadable answer") from None
    choices = []
    for choice in completion.choices:
        message = choice.message
        calls = [
            ToolCallDelta(index, call.id, "function", FunctionCallDelta(call.function.name, call.function.arguments))
            for index, call in enumerate(message.tool_calls or ())
        ]
        delta = Delta("assistant", message.content, calls or None, message.refusal)
        choices.append(ChunkChoice(delta, choice.finish_reason, choice.index))
    return ChatCompletionChunk(completion.id, completion.model, choices, completion.created, usage=completion.usage)


def _upstream_error(status: int, raw: bytes) -> EngineError:
    try:
        detail = _error_decoder.decode(raw).error
        message, param = detail.message, detail.param
    except msgspec.MsgspecError:
        message, param = raw[:200].decode(errors="replace"), None
    if 400 <= status < 500 and status not in (401, 403, 408, 429):
        return EngineRejected(message, param)
    return EngineUnavailable(f"engine answered {status}: {message}")
