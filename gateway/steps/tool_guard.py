"""Tool-call policies on one step: labels from what arrived, and a decision on every proposed call.

Tool-call deltas are held (text keeps streaming) until the engine finishes; then every call is judged.
Allowed calls are released whole; a denied call is removed and the assistant text says which call was
blocked and why, so the model can adapt; a call that needs approval is withheld the same way with its
ticket. With no call left, `finish_reason` is `content_filter`. Decisions go into the extension field
`sentrail.tool_calls` (the last chunk of a stream, the body of a plain response) and the session.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import msgspec
import structlog
from opentelemetry.trace import NoOpTracer, Tracer

from gateway.steps.guard import ContentFiltered
from gateway.steps.streaming import Accumulator
from gateway.stores.approvals import ApprovalStore, Ticket, new_ticket_id
from gateway.stores.sessions import PendingStep, SessionState, ToolCallRecord, message_text
from protocol.openai import (
    AssistantMessage,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChunkChoice,
    Delta,
    FunctionCallDelta,
    ToolCallDelta,
    ToolMessage,
    Usage,
)
from rails.config import RailsConfigError
from rails.pipeline import Decision
from rails.tools.config import ToolPolicy, load_tool_policy
from rails.tools.decide import (
    Decider,
    PastCall,
    SessionView,
    ToolDecision,
    arguments_sha256,
    canonical_arguments,
    parse_arguments,
)
from rails.tools.provenance import ProvenanceView, ValueIndex

log = structlog.get_logger("sentrail.tools")
Fetch = Callable[[set[str]], Awaitable[ValueIndex]]  # value keys -> their stored origins in the session


class DecidedChunk(ChatCompletionChunk):
    """The last chunk of a stream whose tool calls were judged: carries the decisions."""

    sentrail: dict[str, Any] | None = None


class ToolGuard:
    """The tool policy in force; replaced whole on reload (a step keeps the one it started with)."""

    def __init__(
        self, policy: ToolPolicy, path: Path, tracer: Tracer | None = None, trace_content: bool = False
    ) -> None:
        self.policy = policy
        self.path = path
        self.tracer = tracer or NoOpTracer()
        self.trace_content = trace_content  # tool-policy spans carry the proposed arguments

    def reload(self) -> dict[str, Any] | None:
        try:
            policy = load_tool_policy(self.path)
        except RailsConfigError as exc:
            log.error("tool_policy_reload_failed", path=str(self.path), errors=exc.errors, kept=self.policy.version)
            return {"type": "policy_reload_failed", "kind": "tools", "errors": exc.errors, "kept": self.policy.version}
        if policy.version == self.policy.version:
            return None
        self.policy = policy
        log.info("tool_policy_reloaded", path=str(self.path), version=policy.version)
        return self.loaded_event("policy_reload")

    def loaded_event(self, kind: str = "policy_loaded") -> dict[str, Any]:
        digest = hashlib.sha256(self.path.read_bytes()).hexdigest() if self.path.exists() else ""
        return {"type": kind, "kind": "tools", "version": self.policy.version, "files": {self.path.name: digest}}

    def label(self, request: ChatCompletionRequest, pending: PendingStep, rail_decisions: list[Decision]) -> None:
        """What arrived in this step, as data flow: labels from its tool results (by the tool that produced
        them and the rails that acted on them, never removed), each value's origin in the provenance
        index, and tool results that bypassed the policy (flagged, labelled, or refused by the policy)."""
        policy = self.policy
        per_message: dict[int, set[str]] = {}
        per_field: dict[int, dict[str, tuple[str, ...]]] = {}  # message -> path -> labels of rails that scored there
        for decision in rail_decisions:
            if decision.shadow:
                continue
            label = decision.label if decision.action == "label" else None
            if label is None and decision.stage == "tool_result":
                label = policy.label_for_rail(decision.rail)
            if label:
                pending.new_labels.add(label)
                at = decision.message if decision.message is not None else -1
                if decision.fields and decision.action == "label" and _one_text(request, at):
                    fields = per_field.setdefault(at, {})
                    for path in decision.fields:
                        fields[path] = (*fields.get(path, ()), label)
                else:
                    per_message.setdefault(at, set()).add(label)
        messages = request.messages
        names = {
            c.id: c.function.name for m in messages if isinstance(m, AssistantMessage) for c in m.tool_calls or ()
        }  # fmt: skip  (the tools a resent history says it called)
        indexed = policy.reads_provenance  # no rule asks where values came from: nothing to index
        for index in pending.fresh:
            message = messages[index]
            if not isinstance(message, ToolMessage):
                if indexed:
                    pending.index.add_message(type(message).__struct_config__.tag, message_text(message.content),
                                              pending.number)  # fmt: skip
                continue
            call = pending.state.calls.get(message.tool_call_id)
            labels = per_message.get(index, set())
            tool = call.name if call is not None else names.get(message.tool_call_id, "")
            pending.new_labels |= policy.labels_for_tool(tool)  # labels only restrict: a claimed tool's apply too
            if not pending.is_new and (bypass := _bypass(call)):
                labels = labels | {policy.file.bypass.label}
                pending.new_labels.add(policy.file.bypass.label)
                if call is not None:  # one never emitted is flagged `unknown_tool_call_id` already
                    pending.flags.append(f"policy_bypass:{bypass}:{message.tool_call_id}")
                log.warning("policy_bypass", call_id=message.tool_call_id, reason=bypass)
                if policy.file.bypass.action == "block":
                    raise PolicyViolation(f"The tool result answers a call {BYPASS_REASONS[bypass]} "
                                          f"({message.tool_call_id}).", f"messages[{index}]")  # fmt: skip
            if indexed:
                pointed = call is not None and call.pointed
                pending.index.add_tool_result(message_text(message.content), tool, pending.number,
                                              policy.field_labels(tool), pointed, tuple(sorted(labels)),
                                              per_field.get(index))  # fmt: skip

    def judge(
        self, request: ChatCompletionRequest, pending: PendingStep, tenant: str, approvals: ApprovalStore | None,
        fetch: Fetch | None = None,
    ) -> Judge:  # fmt: skip
        judge = Judge(self.policy, request, pending, tenant, approvals, self.tracer, fetch)
        judge.trace_content = self.trace_content
        return judge


def _one_text(request: ChatCompletionRequest, index: int) -> bool:
    """The message is one text (the rails judged it whole), so the field paths a rail named are those of the
    text indexed; a result in several text parts is labelled as a whole."""
    if not 0 <= index < len(request.messages):
        return False
    content = getattr(request.messages[index], "content", None)
    return isinstance(content, str) or (isinstance(content, list) and len(content) == 1)


BYPASS_REASONS = {"denied": "that Sentrail denied", "withheld": "that Sentrail withheld for approval",
                  "never_emitted": "that Sentrail never emitted in this session"}  # fmt: skip


def _bypass(call: ToolCallRecord | None) -> str | None:
    """Why a tool result for this call bypasses the policy: the agent ran what it was never handed."""
    if call is None:
        return "never_emitted"
    return {"deny": "denied", "require_approval": "withheld"}.get(call.decision)


class PolicyViolation(ContentFiltered):
    """A tool result that answers a call the policy did not release, with `bypass.action: block`."""

    error_type = "policy_violation"

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message, param, [])


class Judge:
    """Decides the calls of one step; the session view is built on the first call only."""

    def __init__(
        self,
        policy: ToolPolicy,
        request: ChatCompletionRequest,
        pending: PendingStep,
        tenant: str,
        approvals: ApprovalStore | None = None,
        tracer: Tracer | None = None,
        fetch: Fetch | None = None,
    ) -> None:
        schemas = None
        if request.tools is not None:
            schemas = {tool.function.name: tool.function.parameters for tool in request.tools}
        self.decider = Decider(policy, schemas)
        self.request, self.pending, self.tenant = request, pending, tenant
        self.decisions: list[ToolDecision] = []
        self.arguments: dict[str, str] = {}  # call id -> the arguments proposed
        self.approvals = approvals
        self.tracer = tracer or NoOpTracer()
        self.trace_content = False
        self.tickets: list[Ticket] = []  # issued this step, saved before the client hears of them
        self.fetch = fetch  # stored provenance of value keys (one Redis read), None: this step's own only
        self._view: SessionView | None = None

    def view(self) -> SessionView:
        if self._view is None:
            self._view = session_view(self.pending.state, self.request.model, self.pending.new_labels)
        return self._view

    async def prepare(self, calls: list[tuple[str, str]]) -> None:
        """Read the stored provenance of every value these (tool, raw arguments) calls carry, in one round
        trip before deciding (only for tools whose rules ask where values came from)."""
        policy = self.decider.policy
        keys = policy.lookup_keys((name, parse_arguments(raw)) for name, raw in calls)
        stored = ValueIndex()
        if self.fetch is not None and keys and not self.pending.is_new:
            stored = await self.fetch(keys)
        self.view().provenance = ProvenanceView(stored, self.pending.index, untrusted=policy.file.provenance.untrusted)

    def decide(self, call_id: str, name: str, arguments: str) -> ToolDecision:
        view = self.view()
        with self.tracer.start_as_current_span(f"tool_policy {name}") as span:
            decision = self.decider.decide(call_id, name, arguments, view)
            span.set_attributes({
                "gen_ai.tool.name": name, "gen_ai.tool.call.id": call_id, "gen_ai.conversation.id": view.session_id,
                "sentrail.tool.decision": decision.action, "sentrail.policy.rule": decision.rule,
                "sentrail.policy.reason": decision.reason, "sentrail.policy.version": decision.policy_version,
                "sentrail.tenant": self.tenant,
            })  # fmt: skip
            if self.trace_content:
                span.set_attribute("gen_ai.tool.call.arguments", arguments)
            if decision.action == "require_approval":
                decision.ticket = self._ticket(call_id, name, arguments, decision)
                span.set_attribute("sentrail.approval.ticket", decision.ticket)
            log.info("tool_call_decided", tool=name, call_id=call_id, action=decision.action, rule=decision.rule,
                     reason=decision.reason, version=decision.policy_version, ticket=decision.ticket)  # fmt: skip
        view.add(PastCall(name, canonical_arguments(arguments), decision.action))  # later calls of the step count it
        if decision.action == "allow" and self.decider.policy.is_source(name):
            self.pending.pointed[call_id] = view.provenance.points(parse_arguments(arguments))
        self.decisions.append(decision)
        self.arguments[call_id] = arguments
        return decision

    def _ticket(self, call_id: str, name: str, arguments: str, decision: ToolDecision) -> str:
        now = time.time()
        ticket = Ticket(
            id=new_ticket_id(), tenant=self.tenant, session_id=self.pending.state.session_id, call_id=call_id,
            tool=name, arguments=arguments, arguments_sha256=arguments_sha256(parse_arguments(arguments)),
            policy_version=decision.policy_version, reason=decision.reason, created_at=now,
            expires_at=now + self.decider.policy.file.approval_ttl_s,
        )  # fmt: skip
        self.tickets.append(ticket)
        return ticket.id

    async def save_tickets(self) -> None:
        if self.tickets and self.approvals is not None:
            await self.approvals.create(self.tickets)
            for ticket in self.tickets:
                log.info("approval_requested", ticket=ticket.id, tool=ticket.tool, call_id=ticket.call_id,
                         arguments_sha256=ticket.arguments_sha256, policy_version=ticket.policy_version)  # fmt: skip
        self.tickets = []

    def deliver(self, ticket: Ticket) -> list[ChatCompletionChunk]:
        """The approved call, exactly as proposed, as an engine would have streamed it (no model call)."""
        decision = ToolDecision(ticket.call_id, ticket.tool, "allow", f"approved by {ticket.decided_by}",
                                "approval", ticket.policy_version, ticket=ticket.id)  # fmt: skip
        self.decisions.append(decision)
        self.arguments[ticket.call_id] = ticket.arguments
        chunk_id = f"chatcmpl-{ticket.id}"
        call = ToolCallDelta(0, ticket.call_id, "function", FunctionCallDelta(ticket.tool, ticket.arguments))
        model = self.request.model
        return [
            ChatCompletionChunk(chunk_id, model, [ChunkChoice(Delta(role="assistant", tool_calls=[call]))]),
            DecidedChunk(chunk_id, model, [ChunkChoice(Delta(), "tool_calls")], sentrail=self.extension()),
            ChatCompletionChunk(chunk_id, model, [], usage=Usage(0, 0, 0)),
        ]

    def extension(self) -> dict[str, Any]:
        return {"tool_calls": [_builtins(d) for d in self.decisions], "policy_version": self.decider.policy.version}


def session_view(state: SessionState, model: str = "", labels: set[str] | None = None) -> SessionView:
    """What the rules see of a stored session: its labels (plus `labels`), steps and calls in order."""
    past = sorted(state.calls.values(), key=lambda c: c.step)
    return SessionView.build(
        state.session_id,
        (PastCall(c.name, canonical_arguments(c.arguments), c.decision) for c in past),
        tenant=state.tenant,
        model=model,
        labels=set(state.labels) | (labels or set()),
        steps=state.steps,
    )


def check_calls(policy: ToolPolicy, view: SessionView, calls: list[tuple[str, str, str]],
                schemas: dict[str, Any] | None) -> list[ToolDecision]:  # fmt: skip
    """Decide (call id, name, arguments) in order, each seeing the ones before it; nothing is recorded."""
    decider = Decider(policy, schemas)
    decisions = []
    for call_id, name, arguments in calls:
        decision = decider.decide(call_id, name, arguments, view)
        view.add(PastCall(name, canonical_arguments(arguments), decision.action))
        if decision.action == "allow":
            view.labels |= policy.labels_for_tool(name)
        decisions.append(decision)
    return decisions


def note(decisions: list[ToolDecision]) -> str:
    """What the model (via the agent) is told about calls it proposed that were not released."""
    lines = []
    for d in decisions:
        what = f"[sentrail] Tool call {d.tool} ({d.call_id})"
        if d.action == "deny":
            lines.append(f"{what} was blocked by policy: {d.reason}.")
        elif d.action == "require_approval":
            lines.append(f"{what} awaits approval (ticket {d.ticket}): {d.reason}.")
    return "\n".join(lines)


async def judge_tool_calls(
    chunks: AsyncIterator[ChatCompletionChunk], judge: Judge
) -> AsyncGenerator[ChatCompletionChunk, None]:
    """Hold tool-call deltas until the engine finishes, then release only the allowed calls."""
    held = Accumulator()
    wrote_text = False
    async for chunk in chunks:
        choice = chunk.choices[0] if chunk.choices else None
        if choice is None:
            yield chunk
            continue
        delta = choice.delta
        if delta.tool_calls:
            held.add_tool_calls(delta.tool_calls)
            delta.tool_calls = None
            if not (delta.role or delta.content or delta.refusal) and choice.finish_reason is None:
                continue
        wrote_text = wrote_text or bool(delta.content)
        if choice.finish_reason is None or not held.calls:
            yield chunk
            continue
        finish = choice.finish_reason
        choice.finish_reason = None
        if delta.role or delta.content or delta.refusal:
            yield chunk
        calls = held.tool_calls()
        await judge.prepare([(c.function.name, c.function.arguments) for c in calls])
        decisions = [judge.decide(c.id, c.function.name, c.function.arguments) for c in calls]
        await judge.save_tickets()
        released = [c for c, d in zip(calls, decisions, strict=True) if d.action == "allow"]
        told = note(decisions)
        if told:
            yield _like(chunk, Delta(content=("\n" if wrote_text else "") + told))
        if released:
            parts = [ToolCallDelta(i, c.id, "function", FunctionCallDelta(c.function.name, c.function.arguments))
                     for i, c in enumerate(released)]  # fmt: skip
            yield _like(chunk, Delta(tool_calls=parts))
        final = finish if not decisions else ("tool_calls" if released else "content_filter")
        yield DecidedChunk(chunk.id, chunk.model, [ChunkChoice(Delta(), final)], chunk.created,
                           sentrail=judge.extension())  # fmt: skip
        held = Accumulator()


def _like(chunk: ChatCompletionChunk, delta: Delta) -> ChatCompletionChunk:
    return ChatCompletionChunk(chunk.id, chunk.model, [ChunkChoice(delta, None)], chunk.created)


def _builtins(decision: ToolDecision) -> dict[str, Any]:
    return msgspec.to_builtins(decision)
