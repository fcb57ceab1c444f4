"""`POST /v1/tool-calls/check`: decide proposed calls against a stored session or a supplied trace,
without generating and without recording anything (for frameworks that run tools themselves, and CI).
`agent` role (see deps.authenticate)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from litestar import Request, post
from msgspec import Meta

from gateway.errors import InvalidRequest, SessionNotFound
from gateway.http.routes.chat import decode_body
from gateway.http.routes.deps import authenticate
from gateway.steps.tool_guard import check_calls, session_view
from gateway.stores.sessions import SESSION_ID
from protocol.openai import Tool
from rails.tools.decide import PastCall, SessionView, canonical_arguments, parse_arguments
from rails.tools.provenance import ProvenanceView


class ProposedCall(msgspec.Struct, forbid_unknown_fields=True):
    name: Annotated[str, Meta(min_length=1, max_length=128)]
    arguments: str | dict[str, Any] = "{}"
    id: str | None = None


class TracedCall(msgspec.Struct, forbid_unknown_fields=True):
    """A call made earlier in the session being checked; an allowed one's result is taken to have come back."""

    name: Annotated[str, Meta(min_length=1, max_length=128)]
    arguments: str | dict[str, Any] = "{}"
    decision: Literal["allow", "deny", "require_approval"] = "allow"


class ToolCheckRequest(msgspec.Struct, forbid_unknown_fields=True):
    calls: Annotated[list[ProposedCall], Meta(min_length=1, max_length=64)]
    session_id: str | None = None
    trace: Annotated[list[TracedCall], Meta(max_length=10_000)] | None = None
    labels: list[str] = []
    tools: list[Tool] | None = None
    model: str = ""


def _json(arguments: str | dict[str, Any]) -> str:
    return arguments if isinstance(arguments, str) else msgspec.json.encode(arguments).decode()


@post("/v1/tool-calls/check", status_code=200)
async def check_tool_calls(request: Request) -> dict[str, Any]:
    key = await authenticate(request)
    body = decode_body(await request.body(), ToolCheckRequest)
    guard = request.app.state.chat.tools
    if guard is None:
        raise InvalidRequest("No tool policy is configured (policies/tools.yaml).")
    if body.session_id is not None and body.trace is not None:
        raise InvalidRequest("Give either `session_id` or `trace`, not both.", "trace")
    policy = guard.policy
    if body.session_id is not None:
        if not SESSION_ID.match(body.session_id):
            raise SessionNotFound(body.session_id[:128])
        state = await request.app.state.sessions.load(key.tenant, body.session_id)
        if state is None:
            raise SessionNotFound(body.session_id)
        view = session_view(state, body.model, set(body.labels))
        keys = policy.lookup_keys((c.name, parse_arguments(_json(c.arguments))) for c in body.calls)
        stored = await request.app.state.sessions.provenance(key.tenant, body.session_id, keys)
        view.provenance = ProvenanceView(stored, untrusted=policy.file.provenance.untrusted)
    else:
        view = SessionView("check", tenant=key.tenant, model=body.model, labels=set(body.labels))
        for call in body.trace or ():  # the session as it happened: counts, and labels of allowed calls' results
            view.add(PastCall(call.name, canonical_arguments(_json(call.arguments)), call.decision))
            if call.decision == "allow":
                view.labels |= policy.labels_for_tool(call.name)
    schemas = None if body.tools is None else {t.function.name: t.function.parameters for t in body.tools}
    proposed = [(c.id or f"call_{i}", c.name, _json(c.arguments)) for i, c in enumerate(body.calls)]
    decisions = check_calls(policy, view, proposed, schemas)
    return {
        "object": "tool_calls.check",
        "policy_version": policy.version,
        "session_id": body.session_id,
        "labels": sorted(view.labels),
        "decisions": msgspec.to_builtins(decisions),
    }
