"""The step orchestration for `/v1/chat/completions`: admit -> engine (traced) -> response.

Rails, tool policies and sessions (later issues) hook in here, around `_generate`, so streaming and
non-streaming clients share one path. Engines always stream; non-streaming clients get the chunks
folded by `Accumulator`.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing

import anyio
import structlog
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer

from engines.pool import EnginePool

from .errors import ModelNotFound, describe, sse_error_event
from .metrics import Metrics
from .observability import chat_span_attributes
from .protocol import ChatCompletion, ChatCompletionChunk, ChatCompletionRequest
from .streaming import DONE, Accumulator, prepend, sse_event

log = structlog.get_logger("sentrail.chat")


class ChatService:
    def __init__(self, pool: EnginePool, metrics: Metrics, tracer: Tracer, provider: str = "vllm") -> None:
        self.pool = pool
        self.metrics = metrics
        self.tracer = tracer
        self.provider = provider
        self._models = set(pool.model_ids)

    async def complete(self, request: ChatCompletionRequest, request_id: str) -> ChatCompletion:
        accumulator = Accumulator()
        async with aclosing(self._generate(request, request_id)) as chunks:
            async for chunk in chunks:
                accumulator.add(chunk)
        return accumulator.result(request.model)

    async def open_stream(self, request: ChatCompletionRequest, request_id: str) -> AsyncIterator[bytes]:
        """Start a stream and wait for its first event, so that a failure before the first byte is
        raised here (and becomes a JSON error) rather than inside an already-started 200 stream."""
        events = self._sse(request, request_id)
        try:
            first = await anext(events)
        except BaseException:
            await events.aclose()
            raise
        return prepend(first, events)

    async def _sse(self, request: ChatCompletionRequest, request_id: str) -> AsyncGenerator[bytes, None]:
        started = False
        try:
            async with aclosing(self._generate(request, request_id)) as chunks:
                async for chunk in chunks:
                    if chunk.usage is not None and not request.include_usage:
                        if not chunk.choices:
                            continue
                        chunk.usage = None
                    started = True
                    yield sse_event(chunk)
            yield DONE
        except Exception as exc:
            if not started:
                raise
            error_type, message, _ = describe(exc)
            log.warning("stream_failed_after_start", error_type=error_type, error=message)
            yield sse_error_event(exc)

    async def _generate(
        self, request: ChatCompletionRequest, request_id: str
    ) -> AsyncGenerator[ChatCompletionChunk, None]:
        """One engine call: a slot from the pool, a `chat {model}` span, usage metrics, abort on early exit."""
        model = request.model
        if model not in self._models:
            raise ModelNotFound(model)
        async with self.pool.acquire(model) as engine:
            span = self.tracer.start_span(
                f"chat {model}", kind=SpanKind.CLIENT, attributes=chat_span_attributes(request, self.provider)
            )
            span.set_attribute("sentrail.engine", engine.name)
            span.set_attribute("sentrail.request_id", request_id)
            stream = engine.generate(request, request_id)
            started = time.perf_counter()
            first = True
            finished = False
            try:
                async for chunk in stream:
                    if first:
                        first = False
                        ttft = time.perf_counter() - started
                        self.metrics.ttft.labels(model).observe(ttft)
                        span.set_attribute("gen_ai.response.id", chunk.id)
                        span.set_attribute("gen_ai.response.model", chunk.model)
                        span.set_attribute("sentrail.time_to_first_chunk_s", ttft)
                    chunk.model = model
                    self._observe(chunk, span)
                    yield chunk
                finished = True
            except BaseException as exc:
                error_type = describe(exc)[0] if isinstance(exc, Exception) else "cancelled"
                span.set_status(Status(StatusCode.ERROR, error_type))
                span.set_attribute("error.type", error_type)
                raise
            finally:
                with anyio.CancelScope(shield=True):  # cleanup must run even while being cancelled
                    await stream.aclose()
                    if not finished:
                        await engine.abort(request_id)
                        log.info("engine_request_aborted", engine=engine.name)
                span.end()

    def _observe(self, chunk: ChatCompletionChunk, span: Span) -> None:
        for choice in chunk.choices:
            if choice.finish_reason is not None:
                span.set_attribute("gen_ai.response.finish_reasons", (choice.finish_reason,))
        usage = chunk.usage
        if usage is not None:
            span.set_attribute("gen_ai.usage.input_tokens", usage.prompt_tokens)
            span.set_attribute("gen_ai.usage.output_tokens", usage.completion_tokens)
            self.metrics.tokens.labels(chunk.model, "input").inc(usage.prompt_tokens)
            self.metrics.tokens.labels(chunk.model, "output").inc(usage.completion_tokens)
