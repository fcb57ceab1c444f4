"""One MCP `tools/call`, judged like a chat step's tool call and recorded as a step of the agent's session.

Before the upstream sees the call: the tool policy (`tools.yaml`: schema, limits, rules over the session's
labels, calls and argument provenance, approvals bound to the exact call). After it answered: the
`tool_result` rails (block, mask, label) on every text of the result, the labels of the tool and of the rails
that acted, and the provenance index of its values. The step (`api: "mcp"`) is written with its audit
records in one call, so the next chat step of the session (or MCP call) sees what this one brought in.

A call that the chat path released (same session, tool and arguments, not yet answered) is that call being
executed: it is not judged twice, and its result answers it. An approved ticket for exactly this call
(tool, SHA-256 of the canonical arguments) is claimed once, and the call goes through.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import mcp_types as types
import msgspec
import structlog

from gateway.mcp.upstream import UpstreamUnavailable
from gateway.steps.guard import ContentFiltered, Guard
from gateway.steps.tool_guard import Judge, ToolGuard
from gateway.stores.approvals import ApprovalStore
from gateway.stores.audit import AuditLog, step_events
from gateway.stores.keys import KeyRecord
from gateway.stores.ratelimit import RateLimiter
from gateway.stores.sessions import PendingStep, SessionStore, Step, ToolCallRecord
from protocol.openai import ChatCompletionRequest, FunctionDefinition, TextPart, Tool, ToolMessage
from rails.pipeline import Decision
from rails.tools.decide import ToolDecision, arguments_sha256, canonical_arguments

log = structlog.get_logger("sentrail.mcp")


@dataclass
class McpContext:
    """Who calls, in which session (what `step_events` reads of a step's context)."""

    request_id: str
    key: KeyRecord
    session_id: str
    is_new_session: bool
    mcp_session_id: str | None = None
    started: float = field(default_factory=time.perf_counter)


@dataclass
class McpRun:
    """The parts of a step that the audit records are made from."""

    ctx: McpContext
    request: ChatCompletionRequest
    judge: Judge | None
    api: str = "mcp"


@dataclass
class Outcome:
    """What the agent gets, and what was decided."""

    result: types.CallToolResult
    action: str  # allow | deny | require_approval | blocked | upstream_error
    decision: ToolDecision | None = None
    rails: list[Decision] = field(default_factory=list)


def tool_error(text: str) -> types.CallToolResult:
    return types.CallToolResult(content=[types.TextContent(type="text", text=text)], is_error=True)


class CallJudge:
    def __init__(
        self, sessions: SessionStore, tools: ToolGuard | None, guard: Guard | None, approvals: ApprovalStore,
        audit: AuditLog | None, limiter: RateLimiter, audit_content: bool = False,
    ) -> None:  # fmt: skip
        self.sessions = sessions
        self.tools = tools
        self.guard = guard
        self.approvals = approvals
        self.audit = audit
        self.limiter = limiter
        self.audit_content = audit_content

    async def call(self, ctx: McpContext, name: str, server: str, schema: dict[str, Any], arguments: dict[str, Any],
                   execute: Any) -> Outcome:  # fmt: skip
        """Judge the call, run it (`execute()` -> the upstream's result) if released, judge the result."""
        key = ctx.key
        await self.limiter.admit(key)
        pending = await self.sessions.begin(key, ctx.session_id, ctx.is_new_session)
        pending.check_budgets(time.time())
        raw = json.dumps(arguments, ensure_ascii=False)
        tool = Tool(function=FunctionDefinition(name=name, parameters=schema or None))
        request = ChatCompletionRequest(model=f"mcp:{server}", messages=[ToolMessage("", "-")], tools=[tool])
        judge, decision, call_id = await self._decide(ctx, pending, request, name, raw)
        if decision.action != "allow":
            await self._commit(ctx, pending, request, judge, call_id, name, raw, [], emitted=False)
            return Outcome(tool_error(refusal_text(decision)), decision.action, decision)
        if call_id not in pending.state.calls:  # the result's labels and provenance name its tool
            pending.state.calls[call_id] = ToolCallRecord(name, raw, pending.number,
                                                          pointed=pending.pointed.get(call_id, False))  # fmt: skip
        try:
            result = await execute()
        except UpstreamUnavailable as exc:
            pending.flags.append("mcp_upstream_error")
            await self._commit(ctx, pending, request, judge, call_id, name, raw, [])
            return Outcome(tool_error(str(exc)), "upstream_error", decision)
        return await self._judge_result(ctx, pending, request, judge, decision, call_id, name, raw, result)

    async def _decide(
        self, ctx: McpContext, pending: PendingStep, request: ChatCompletionRequest, name: str, raw: str
    ) -> tuple[Judge | None, ToolDecision, str]:
        call_id = f"mcp_{uuid.uuid4().hex[:24]}"
        released = released_on_chat(pending, name, raw)
        if released is not None:  # the chat path judged and released this very call: this executes it
            decision = ToolDecision(released, name, "allow", "released on the chat path", "released")
            return None, decision, released
        if self.tools is None:
            return None, ToolDecision(call_id, name, "allow", "no tool policy configured"), call_id
        fetch = partial(self.sessions.provenance, ctx.key.tenant, ctx.session_id)
        judge = self.tools.judge(request, pending, ctx.key.tenant, self.approvals, fetch)
        await judge.prepare([(name, raw)])
        decision = judge.decide(call_id, name, raw)
        if decision.action == "require_approval":
            approved = await self._claim(pending, name, raw)
            if approved is not None:
                judge.tickets.clear()
                decision = ToolDecision(call_id, name, "allow", f"approved by {approved.decided_by}", "approval",
                                        approved.policy_version, ticket=approved.id)  # fmt: skip
                judge.decisions[-1] = decision
            else:
                await judge.save_tickets()
        return judge, decision, call_id

    async def _claim(self, pending: PendingStep, name: str, raw: str) -> Any:
        """An approved ticket of this session for exactly this call (tool, canonical arguments), claimed once."""
        state = pending.state
        if not state.approved or self.tools is None:
            return None
        digest = arguments_sha256(json.loads(raw))
        for ticket_id in state.approved:
            ticket = await self.approvals.get(state.tenant, ticket_id)
            if ticket.tool == name and ticket.arguments_sha256 == digest:
                claimed = await self.approvals.claim(state.tenant, state.session_id, [ticket_id],
                                                     self.tools.policy.version)  # fmt: skip
                if claimed is not None:
                    return claimed
        return None

    async def _judge_result(
        self, ctx: McpContext, pending: PendingStep, request: ChatCompletionRequest, judge: Judge | None,
        decision: ToolDecision, call_id: str, name: str, raw: str, result: types.CallToolResult,
    ) -> Outcome:  # fmt: skip
        texts = result_texts(result)
        message = ToolMessage([TextPart(text) for _, text in texts] or "", call_id)
        request = msgspec.structs.replace(request, messages=[message])
        pending.fresh = [0]
        rails: list[Decision] = []
        try:
            if self.guard is not None:
                request, rails = await self.guard.inbound(request, [0])
        except ContentFiltered as blocked:
            pending.flags.append("blocked:result")
            await self._commit(ctx, pending, request, judge, call_id, name, raw, blocked.decisions)
            text = f"[sentrail] The result of tool {name} was withheld: {blocked}."
            return Outcome(tool_error(text), "blocked", decision, blocked.decisions)
        content = request.messages[0].content
        checked = [part.text for part in content] if isinstance(content, list) else []
        masked = apply_texts(result, texts, checked)
        # The session records, labels and indexes one text: the structured content when there is one (its
        # fields keep their paths for provenance), else the text contents.
        structured = [t for (where, _), t in zip(texts, checked, strict=True) if where[0] == "structured"]
        whole = structured[0] if structured else "\n".join(checked)
        request = msgspec.structs.replace(request, messages=[ToolMessage(whole, call_id)])
        pending.observe(request)
        if self.tools is not None:
            self.tools.label(request, pending, rails)
        await self._commit(ctx, pending, request, judge, call_id, name, raw, rails)
        return Outcome(masked, "allow", decision, rails)

    async def _commit(
        self, ctx: McpContext, pending: PendingStep, request: ChatCompletionRequest, judge: Judge | None,
        call_id: str, name: str, raw: str, rails: list[Decision], emitted: bool = True,
    ) -> None:  # fmt: skip
        """The step: the call (new, or the chat path's call it executes), its decision, what its result brought."""
        number = pending.number
        decisions = list(judge.decisions) if judge is not None else []
        released = judge is None and self.tools is not None
        if not decisions:  # released on the chat path, or no policy: recorded as an allowed call
            reason = "released on the chat path" if released else "no tool policy configured"
            decisions = [ToolDecision(call_id, name, "allow", reason, "released" if released else "")]
        for decision in rails:
            if decision.action == "label" and decision.label and not decision.shadow:
                pending.new_labels.add(decision.label)
        calls: dict[str, ToolCallRecord] = {}  # answered: set by the store for the results that arrived
        if not emitted:
            calls[call_id] = ToolCallRecord(name, raw, number, decisions[-1].action)
        elif not released:  # answered here, by its result or its error: never a call to execute again
            calls[call_id] = ToolCallRecord(
                name, raw, number, answered=True, pointed=pending.pointed.get(call_id, False)
            )
        step = Step(
            at=time.time(), request_id=ctx.request_id, api="mcp", model=request.model, received=pending.received,
            emitted={"content": "", "finish_reason": "tool_calls" if emitted else "content_filter",
                     "tool_calls": [{"id": call_id, "name": name, "arguments": raw}] if emitted else []},
            flags=pending.flags, rails=rails, tool_calls=decisions, labels=sorted(pending.new_labels),
            timings={"done": round((time.perf_counter() - ctx.started) * 1000, 3)},
        )  # fmt: skip
        if self.audit is None:
            await self.sessions.commit(pending, step, calls)
            return
        rails_version = self.guard.rails.version if self.guard is not None else ""
        events = step_events(McpRun(ctx, request, judge), step, self.audit_content, rails_version)
        events[0]["mcp_session_id"] = ctx.mcp_session_id
        if judge is None:
            digest = arguments_sha256(json.loads(raw))
            for event in events:
                if event["type"] == "tool_call":
                    event["arguments_sha256"] = digest
        await self.audit.append(ctx.key.tenant, events, self.sessions.step_writes(pending, step, calls))


def released_on_chat(pending: PendingStep, name: str, raw: str) -> str | None:
    """The id of a call the chat path released in this session with this tool and these arguments, not answered
    (the model's call, or an approved call the chat path delivered; calls made over MCP are answered at once)."""
    canonical = canonical_arguments(raw)
    for call_id, call in pending.state.calls.items():
        if call.name == name and call.decision == "allow" and not call.answered:
            if canonical_arguments(call.arguments) == canonical:
                return call_id
    return None


def refusal_text(decision: ToolDecision) -> str:
    """What the model reads when its call was not run: the reason, and for approvals how to go on."""
    if decision.action == "require_approval":
        return (f"[sentrail] Tool call {decision.tool} awaits approval (ticket {decision.ticket}): {decision.reason}. "
                "It was not run. Once an approver approves the ticket, make exactly the same call again "
                "(same tool, same arguments) and it will run.")  # fmt: skip
    return (f"[sentrail] Tool call {decision.tool} was blocked by policy: {decision.reason}. It was not run; "
            "do not retry it unchanged.")  # fmt: skip


def result_texts(result: types.CallToolResult) -> list[tuple[tuple[str, int], str]]:
    """Every text of a result the rails read: text contents, text resources, the structured content (as JSON)."""
    texts: list[tuple[tuple[str, int], str]] = []
    for index, item in enumerate(result.content):
        if isinstance(item, types.TextContent):
            texts.append((("content", index), item.text))
        elif isinstance(item, types.EmbeddedResource) and isinstance(item.resource, types.TextResourceContents):
            texts.append((("resource", index), item.resource.text))
    if result.structured_content is not None:
        texts.append((("structured", 0), json.dumps(result.structured_content, ensure_ascii=False)))
    return texts


def apply_texts(result: types.CallToolResult, texts: list[tuple[tuple[str, int], str]], checked: list[str]) -> Any:
    """The result with each text replaced by what the rails released (a masked structured content that no
    longer parses is dropped: the text contents still carry it)."""
    result = result.model_copy(update={"meta": None})  # the upstream's own stamp is not Sentrail's
    if not texts or [t for _, t in texts] == checked:
        return result
    content = list(result.content)
    structured = result.structured_content
    for ((kind, index), before), after in zip(texts, checked, strict=True):
        if before == after:
            continue
        if kind == "content":
            content[index] = content[index].model_copy(update={"text": after})
        elif kind == "resource":
            item = content[index]
            content[index] = item.model_copy(update={"resource": item.resource.model_copy(update={"text": after})})
        else:
            try:
                structured = json.loads(after)
            except json.JSONDecodeError:
                structured = None
    return result.model_copy(update={"content": content, "structured_content": structured})
