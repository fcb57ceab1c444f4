"""The step orchestration: admit (model access, rate limit, session, budgets) -> engine (traced) ->
commit the step to the session -> response.

Streaming and non-streaming clients share one path; rails and tool policies (later) hook in around
`_generate`. Engines always stream; the `Accumulator` folds chunks for the session record and for
non-streaming clients.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass, field

import anyio
import msgspec
import structlog
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer

from engines.pool import EnginePool

from .errors import ModelNotFound, describe, sse_error_event
from .keys import KeyRecord
from .metrics import Metrics
from .observability import chat_span_attributes
from .protocol import ChatCompletion, ChatCompletionChunk, ChatCompletionRequest, Usage
from .ratelimit import RateLimiter
from .sessions import PendingStep, SessionStore, Step, ToolCallRecord
from .streaming import DONE, Accumulator, prepend, sse_event

log = structlog.get_logger("sentrail.chat")


@dataclass
class StepContext:
    """Who is asking, in which session; `headers` collects what the response must carry."""

    request_id: str
    key: KeyRecord
    session_id: str
    is_new_session: bool
    headers: dict[str, str] = field(default_factory=dict)


class ChatService:
    def __init__(
        self,
        pool: EnginePool,
        metrics: Metrics,
        tracer: Tracer,
        sessions: SessionStore,
        limiter: RateLimiter,
        provider: str = "vllm",
    ) -> None:
        self.pool = pool
        self.metrics = metrics
        self.tracer = tracer
        self.sessions = sessions
        self.limiter = limiter
        self.provider = provider
        self._models = set(pool.model_ids)

    async def complete(self, request: ChatCompletionRequest, ctx: StepContext) -> ChatCompletion:
        request, pending = await self._begin(request, ctx)
        accumulator = Accumulator()
        async with aclosing(self._generate(request, ctx.request_id)) as chunks:
            async for chunk in chunks:
                accumulator.add(chunk)
        await self._commit(request, ctx, pending, accumulator)
        return accumulator.result(request.model)

    async def open_stream(self, request: ChatCompletionRequest, ctx: StepContext) -> AsyncIterator[bytes]:
        """Start a stream and wait for its first event, so that a failure before the first byte is
        raised here (and becomes a JSON error) rather than inside an already-started 200 stream."""
        request, pending = await self._begin(request, ctx)
        events = self._sse(request, ctx, pending)
        try:
            first = await anext(events)
        except BaseException:
            await events.aclose()
            raise
        return prepend(first, events)

    async def _sse(
        self, request: ChatCompletionRequest, ctx: StepContext, pending: PendingStep
    ) -> AsyncGenerator[bytes, None]:
        started = False
        accumulator = Accumulator()
        try:
            async with aclosing(self._generate(request, ctx.request_id)) as chunks:
                async for chunk in chunks:
                    accumulator.add(chunk)
                    if chunk.usage is not None and not request.include_usage:
                        if not chunk.choices:
                            continue
                        chunk.usage = None
                    started = True
                    yield sse_event(chunk)
            await self._commit(request, ctx, pending, accumulator)  # [DONE] only once the step is stored
            yield DONE
        except Exception as exc:
            if not started:
                raise
            error_type, message, _ = describe(exc)
            log.warning("stream_failed_after_start", error_type=error_type, error=message)
            yield sse_error_event(exc)

    async def _begin(
        self, request: ChatCompletionRequest, ctx: StepContext
    ) -> tuple[ChatCompletionRequest, PendingStep]:
        """Admission for one step: model access, rate limit, session state, budgets."""
        if request.model not in self._models:
            raise ModelNotFound(request.model)
        ctx.key.require_model(request.model)
        ctx.headers.update(await self.limiter.admit(ctx.key))
        pending = await self.sessions.begin(ctx.key, ctx.session_id, ctx.is_new_session)
        pending.observe(request)
        tokens_left = pending.check_budgets(time.time())
        ctx.headers["x-session-id"] = ctx.session_id
        if tokens_left is not None:  # never let one step overrun the session's token budget
            asked = request.max_completion_tokens or request.max_tokens or tokens_left
            request = msgspec.structs.replace(request, max_completion_tokens=min(asked, tokens_left), max_tokens=None)
        return request, pending

    async def _commit(
        self, request: ChatCompletionRequest, ctx: StepContext, pending: PendingStep, accumulator: Accumulator
    ) -> None:
        usage = accumulator.usage or Usage()
        number = pending.state.steps + 1
        calls = accumulator.tool_calls()
        step = Step(
            at=time.time(),
            request_id=ctx.request_id,
            api="chat",
            model=request.model,
            received=pending.received,
            emitted={
                "content": "".join(accumulator.content),
                "tool_calls": [{"id": c.id, "name": c.function.name, "arguments": c.function.arguments} for c in calls],
                "finish_reason": accumulator.finish_reason,
            },
            usage={"input": usage.prompt_tokens, "output": usage.completion_tokens},
            flags=pending.flags,
        )
        emitted = {c.id: ToolCallRecord(c.function.name, c.function.arguments, number) for c in calls}
        await self.sessions.commit(pending, step, emitted)
        await self.limiter.add_tokens(ctx.key, usage.total_tokens)

    async def _generate(
        self, request: ChatCompletionRequest, request_id: str
    ) -> AsyncGenerator[ChatCompletionChunk, None]:
        """One engine call: a slot from the pool, a `chat {model}` span, usage metrics, abort on early exit."""
        model = request.model
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
