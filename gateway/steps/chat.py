"""The step orchestration: admit (model access, rate limit, session, budgets) -> engine (traced) ->
commit the step to the session -> response.

Streaming and non-streaming clients share one path; rails and tool policies (later) hook in around
`_generate`. Engines always stream; the `Accumulator` folds chunks for the session record and for
non-streaming clients.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from contextlib import aclosing
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import anyio
import msgspec
import structlog
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer

from engines.base import EngineUnavailable
from engines.pool import EnginePool
from gateway.errors import ModelNotFound, describe, sse_error_event
from gateway.metrics import Metrics
from gateway.observability import bind_step, chat_span_attributes
from gateway.steps.guard import ContentFiltered, Guard, filter_output
from gateway.steps.history import History, text_key
from gateway.steps.streaming import DONE, Accumulator, prepend, sse_event
from gateway.steps.tool_guard import Judge, ToolGuard, judge_tool_calls
from gateway.stores.approvals import ApprovalStore, Ticket
from gateway.stores.audit import AuditLog, step_events
from gateway.stores.keys import KeyRecord
from gateway.stores.ratelimit import RateLimiter
from gateway.stores.sessions import PendingStep, SessionStore, Step, ToolCallRecord
from protocol.openai import ChatCompletion, ChatCompletionChunk, ChatCompletionRequest, Usage
from rails.pipeline import Decision
from rails.tools.config import UnverifiedTurns
from rails.tools.provenance import ValueIndex

log = structlog.get_logger("sentrail.chat")
_encoder = msgspec.json.Encoder()


@dataclass
class StepContext:
    """Who is asking, in which session; `headers` collects what the response must carry."""

    request_id: str
    key: KeyRecord
    session_id: str
    is_new_session: bool
    headers: dict[str, str] = field(default_factory=dict)
    started: float = field(default_factory=time.perf_counter)
    marks: dict[str, float] = field(default_factory=dict)  # phase -> ms since started (the review waterfall)

    def mark(self, phase: str) -> None:
        self.marks[phase] = round((time.perf_counter() - self.started) * 1000, 3)


@dataclass
class StepRun:
    """One admitted step: the (possibly capped) request, its session state, and the folded output."""

    request: ChatCompletionRequest
    ctx: StepContext
    pending: PendingStep
    accumulator: Accumulator
    api: str = "chat"
    decisions: list[Decision] = field(default_factory=list)
    judge: Judge | None = None  # the tool policy's judge for this step's proposed calls
    delivered: Ticket | None = None  # an approved call this step hands over instead of asking the model


Renderer = Callable[[StepRun, AsyncIterator[ChatCompletionChunk]], AsyncGenerator[bytes, None]]
ErrorRenderer = Callable[[BaseException], bytes]


async def chat_events(step: StepRun, chunks: AsyncIterator[ChatCompletionChunk]) -> AsyncGenerator[bytes, None]:
    """Chat completion chunks as SSE; usage only when the client asked for it; `[DONE]` last."""
    include_usage = step.request.include_usage
    async for chunk in chunks:
        if chunk.usage is not None and not include_usage:
            if not chunk.choices:
                continue
            chunk.usage = None
        yield sse_event(chunk)
    yield DONE


def _commit_marks(ctx: StepContext) -> dict[str, float]:
    ctx.mark("done")
    return dict(ctx.marks)


class ChatService:
    def __init__(
        self,
        pool: EnginePool,
        metrics: Metrics,
        tracer: Tracer,
        sessions: SessionStore,
        limiter: RateLimiter,
        guard: Guard | None = None,
        tools: ToolGuard | None = None,
        approvals: ApprovalStore | None = None,
        audit: AuditLog | None = None,
        audit_content: bool = False,
        trace_content: bool = False,
        provider: str = "vllm",
    ) -> None:
        self.pool = pool
        self.metrics = metrics
        self.tracer = tracer
        self.sessions = sessions
        self.limiter = limiter
        self.guard = guard
        self.tools = tools
        self.approvals = approvals
        self.audit = audit
        self.audit_content = audit_content
        self.trace_content = trace_content
        self.provider = provider
        self._models = set(pool.model_ids)

    async def complete(self, request: ChatCompletionRequest, ctx: StepContext) -> ChatCompletion:
        step = await self.begin(request, ctx)
        async with aclosing(self.run(step)) as chunks:
            async for _ in chunks:
                pass
        result = step.accumulator.result(request.model)
        judged = step.judge is not None and bool(step.judge.decisions)  # else an output rail blocked
        if result.choices[0].finish_reason == "content_filter" and self.guard is not None and not judged:
            result.choices[0].message.content = self.guard.refusal  # nothing of the blocked answer
        extension: dict[str, Any] = {}
        if step.decisions and self.guard is not None:
            extension = {"rails": msgspec.to_builtins(step.decisions), "rails_version": self.guard.rails.version}
        if step.judge is not None and step.judge.decisions:
            extension.update(step.judge.extension())
        result.sentrail = extension or None
        return result

    async def open_stream(
        self,
        request: ChatCompletionRequest,
        ctx: StepContext,
        render: Renderer | None = None,
        on_error: ErrorRenderer = sse_error_event,
        api: str = "chat",
    ) -> AsyncGenerator[bytes, None]:
        """Start a stream and wait for its first event, so that a failure before the first byte is
        raised here (and becomes a JSON error) rather than inside an already-started 200 stream.
        `render` turns the step's chunks into wire events (chat completion chunks by default)."""
        step = await self.begin(request, ctx, api)
        events = self._sse(step, render or chat_events, on_error)
        try:
            first = await anext(events)
        except BaseException:
            await events.aclose()
            raise
        return prepend(first, events)

    async def _sse(self, step: StepRun, render: Renderer, on_error: ErrorRenderer) -> AsyncGenerator[bytes, None]:
        started = False
        try:
            async with aclosing(self.run(step)) as chunks, aclosing(render(step, chunks)) as events:
                async for event in events:
                    started = True
                    yield event
        except Exception as exc:
            if not started:
                raise
            error_type, message, _ = describe(exc)
            log.warning("stream_failed_after_start", error_type=error_type, error=message)
            yield on_error(exc)

    async def run(self, step: StepRun) -> AsyncGenerator[ChatCompletionChunk, None]:
        """The engine's chunks for this step after the output rails, folded as they pass; the step is
        committed to its session before the generator finishes (a stream's last event follows it)."""
        if step.delivered is not None and step.judge is not None:  # an approved call: no model, no rails
            for chunk in step.judge.deliver(step.delivered):
                step.accumulator.add(chunk)
                yield chunk
            await self._commit(step)
            return
        output = self.guard.output_filter(step.request.stream) if self.guard is not None else None

        def capture(span: Span) -> None:  # what the client received: after output rails and tool policy
            message = step.accumulator.result(step.request.model).choices[0].message
            span.set_attribute("gen_ai.output.messages", _encoder.encode([message]).decode())

        before_end = capture if self.trace_content else None
        async with aclosing(self._generate(step.request, step.ctx, before_end)) as chunks:
            stream: AsyncIterator[ChatCompletionChunk] = chunks
            if output is not None:
                stream = filter_output(stream, output, self.guard.refusal)  # type: ignore[union-attr]
            if step.judge is not None:
                stream = judge_tool_calls(stream, step.judge)
            async for chunk in stream:
                step.accumulator.add(chunk)
                yield chunk
            if output is not None:
                step.decisions.extend(output.decisions)
        await self._commit(step)

    async def begin(self, request: ChatCompletionRequest, ctx: StepContext, api: str = "chat") -> StepRun:
        """Admission for one step: model access, rate limit, session state, budgets."""
        if request.model not in self._models:
            raise ModelNotFound(request.model)
        ctx.key.require_model(request.model)
        ctx.headers.update(await self.limiter.admit(ctx.key))
        history = History.of(request)
        pending = await self.sessions.begin(ctx.key, ctx.session_id, ctx.is_new_session, history.lookups())
        tokens_left = pending.check_budgets(time.time())
        ctx.headers["x-session-id"] = ctx.session_id
        bind_step(ctx.key.tenant, ctx.session_id)
        ctx.mark("admitted")
        decisions: list[Decision] = []
        try:  # before the engine and the session record see the messages
            request = history.resolve(pending.seen, pending.masked, pending.state.calls)  # as the engine saw them
            pending.fresh = history.fresh
            history.flag(pending, self.tools.policy.file.unverified_turns if self.tools else UnverifiedTurns())
            if self.guard is not None:
                request, decisions = await self.guard.inbound(request, history.fresh)
            pending.observe(request)
            if self.tools is not None:
                self.tools.label(request, pending, decisions)
            pending.judged = history.records(request)
        except ContentFiltered as blocked:  # the session records the blocked step, not its content
            pending.received, pending.index = [], ValueIndex()
            step = StepRun(request, ctx, pending, Accumulator(), api, blocked.decisions or decisions)
            pending.flags.append(f"blocked:{blocked.param}")
            await self._commit(step)
            raise
        ctx.mark("input_rails")
        judge, delivered = None, None
        if self.tools is not None:
            fetch = partial(self.sessions.provenance, ctx.key.tenant, ctx.session_id)
            judge = self.tools.judge(request, pending, ctx.key.tenant, self.approvals, fetch)
            if pending.state.approved and self.approvals is not None:
                state = pending.state
                delivered = await self.approvals.claim(state.tenant, state.session_id, state.approved,
                                                       self.tools.policy.version)  # fmt: skip
        if tokens_left is not None:  # never let one step overrun the session's token budget
            asked = request.max_completion_tokens or request.max_tokens or tokens_left
            request = msgspec.structs.replace(request, max_completion_tokens=min(asked, tokens_left), max_tokens=None)
        return StepRun(request, ctx, pending, Accumulator(), api, decisions, judge, delivered)

    async def _commit(self, run: StepRun) -> None:
        accumulator, pending = run.accumulator, run.pending
        usage = accumulator.usage or Usage()
        number = pending.state.steps + 1
        calls = accumulator.tool_calls()
        for decision in run.decisions:  # detect-and-label rails (the inbound ones were added in `begin`)
            if decision.action == "label" and decision.label and not decision.shadow:
                pending.new_labels.add(decision.label)
        step = Step(
            at=time.time(),
            request_id=run.ctx.request_id,
            api=run.api,
            model=run.request.model,
            received=pending.received,
            emitted={
                "content": "".join(accumulator.content),
                "tool_calls": [{"id": c.id, "name": c.function.name, "arguments": c.function.arguments} for c in calls],
                "finish_reason": accumulator.finish_reason,
            },
            usage={"input": usage.prompt_tokens, "output": usage.completion_tokens},
            flags=pending.flags,
            rails=run.decisions,
            tool_calls=run.judge.decisions if run.judge is not None else [],
            labels=sorted(pending.new_labels),
            timings=_commit_marks(run.ctx),
        )
        if text := "".join(accumulator.content).strip():  # a resent turn holding it needs no second judgement
            pending.judged[0][text_key(text)] = ""
        emitted = {c.id: ToolCallRecord(c.function.name, c.function.arguments, number,
                                        pointed=pending.pointed.get(c.id, False)) for c in calls}  # fmt: skip
        for decision in run.judge.decisions if run.judge is not None else ():
            if decision.action != "allow":  # withheld calls are part of the session's history too
                arguments = run.judge.arguments.get(decision.call_id, "")  # type: ignore[union-attr]
                emitted[decision.call_id] = ToolCallRecord(decision.tool, arguments, number, decision.action)
        if self.audit is not None:  # before the response completes: a client never holds an unaudited answer
            rails_version = self.guard.rails.version if self.guard is not None else ""
            events = step_events(run, step, self.audit_content, rails_version)
            writes = self.sessions.step_writes(pending, step, emitted)
            await self.audit.append(run.ctx.key.tenant, events, writes)  # one command, one round trip
        else:
            await self.sessions.commit(pending, step, emitted)
        await self.limiter.add_tokens(run.ctx.key, usage.total_tokens)

    async def _generate(
        self, request: ChatCompletionRequest, ctx: StepContext, before_end: Callable[[Span], None] | None = None
    ) -> AsyncGenerator[ChatCompletionChunk, None]:
        """The engine's chunks for the step. An engine that fails before its first chunk is reported to the
        pool and the request goes to another healthy replica; after the first chunk, the error stands."""
        tried: set[str] = set()
        while True:
            retry: list[bool] = []
            async with aclosing(self._call(request, ctx, before_end, tried, retry)) as chunks:
                async for chunk in chunks:
                    yield chunk
            if not retry:
                return

    async def _call(
        self,
        request: ChatCompletionRequest,
        ctx: StepContext,
        before_end: Callable[[Span], None] | None,
        tried: set[str],
        retry: list[bool],
    ) -> AsyncGenerator[ChatCompletionChunk, None]:
        """One engine call: a slot from the pool, a `chat {model}` span, usage metrics, abort on early exit."""
        model, request_id = request.model, ctx.request_id
        affinity = None if ctx.is_new_session else ctx.session_id  # a minted id: least loaded, not a random hash
        async with self.pool.acquire(model, affinity, tried) as engine:
            attributes = chat_span_attributes(request, self.provider)
            attributes.update({"sentrail.engine": engine.name, "sentrail.request_id": request_id})
            if self.trace_content:  # the request as the engine got it: after the masking rails
                attributes["gen_ai.input.messages"] = _encoder.encode(request.messages).decode()
            span = self.tracer.start_span(f"chat {model}", kind=SpanKind.CLIENT, attributes=attributes)
            outcome: dict[str, Any] = {}  # set on the span once, at its end (one call, not one per value)
            stream = engine.generate(request, request_id)
            started = time.perf_counter()
            first = True
            finished = False
            try:
                async for chunk in stream:
                    if first:
                        first = False
                        ttft = time.perf_counter() - started
                        ctx.mark("first_token")
                        if request.stream:  # a plain request's one chunk is its whole answer
                            self.metrics.child(self.metrics.ttft, model).observe(ttft)
                            self.metrics.child(self.metrics.engine_ttft, engine.name).observe(ttft)
                        outcome["gen_ai.response.id"] = chunk.id
                        outcome["gen_ai.response.model"] = chunk.model
                        outcome["sentrail.time_to_first_chunk_s"] = ttft
                    chunk.model = model
                    self._observe(chunk, outcome, engine.name)
                    yield chunk
                finished = True
                ctx.mark("engine_done")
                self.pool.succeeded(engine)
            except BaseException as exc:
                error_type = describe(exc)[0] if isinstance(exc, Exception) else "cancelled"
                span.set_status(Status(StatusCode.ERROR, error_type))
                outcome["error.type"] = error_type
                if isinstance(exc, EngineUnavailable):
                    self.pool.failed(engine)
                    self.metrics.engine_errors.labels(engine.name).inc()
                    tried.add(engine.name)
                    if first and self.pool.has_other(model, tried):  # nothing sent yet: another replica
                        log.warning("engine_failover", engine=engine.name, error=str(exc))
                        retry.append(True)
                        return
                raise
            finally:
                with anyio.CancelScope(shield=True):  # cleanup must run even while being cancelled
                    await stream.aclose()
                    if not finished:
                        await engine.abort(request_id)
                        log.info("engine_request_aborted", engine=engine.name)
                span.set_attributes(outcome)
                if before_end is not None and finished:
                    before_end(span)
                span.end()

    def _observe(self, chunk: ChatCompletionChunk, outcome: dict[str, Any], engine: str) -> None:
        for choice in chunk.choices:
            if choice.finish_reason is not None:
                outcome["gen_ai.response.finish_reasons"] = (choice.finish_reason,)
        usage = chunk.usage
        if usage is not None:
            outcome["gen_ai.usage.input_tokens"] = usage.prompt_tokens
            outcome["gen_ai.usage.output_tokens"] = usage.completion_tokens
            metrics = self.metrics
            metrics.child(metrics.tokens, chunk.model, "input").inc(usage.prompt_tokens)
            metrics.child(metrics.tokens, chunk.model, "output").inc(usage.completion_tokens)
            metrics.child(metrics.engine_tokens, engine).inc(usage.completion_tokens)
