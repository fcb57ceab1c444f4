"""Approval tickets of the caller's tenant: list and read (approver or auditor), approve or reject (approver)."""

from __future__ import annotations

from typing import Any

import structlog
from litestar import Request, get, post

from gateway.errors import InvalidRequest
from gateway.http.routes.chat import decode_body
from gateway.http.routes.deps import authenticate, list_limit
from gateway.stores.approvals import TICKET_STATES, ApprovalDecision, Ticket

log = structlog.get_logger("sentrail.approvals")
READERS, DECIDERS = ("approver", "auditor"), ("approver",)


@get("/v1/approvals")
async def list_approvals(request: Request, status: str | None = None, limit: int = 100) -> dict[str, Any]:
    key = await authenticate(request, READERS)
    if status is not None and status not in TICKET_STATES:
        raise InvalidRequest(f"`status` must be one of {', '.join(TICKET_STATES)}.", "status")
    tickets = await request.app.state.approvals.list(key.tenant, status, list_limit(limit))
    return {"object": "list", "data": tickets}


@get("/v1/approvals/{ticket:str}")
async def get_approval(request: Request, ticket: str) -> Ticket:
    key = await authenticate(request, READERS)
    return await request.app.state.approvals.get(key.tenant, ticket[:64])


@post("/v1/approvals/{ticket:str}", status_code=200)
async def decide_approval(request: Request, ticket: str) -> Ticket:
    """Body: {"decision": "approve" | "reject", "note": "..."}."""
    key = await authenticate(request, DECIDERS)
    body = decode_body(await request.body(), ApprovalDecision)
    approvals = request.app.state.approvals
    decided = await approvals.decide(key.tenant, ticket[:64], body.decision == "approve", key.key_id, body.note)
    log.info("approval_decided", ticket=decided.id, status=decided.status, by=key.key_id, tool=decided.tool,
             session_id=decided.session_id, arguments_sha256=decided.arguments_sha256)  # fmt: skip
    await request.app.state.audit.append(key.tenant, [{
        "type": "approval", "ticket": decided.id, "status": decided.status, "by": key.key_id, "note": decided.note,
        "session_id": decided.session_id, "call_id": decided.call_id, "tool": decided.tool,
        "arguments_sha256": decided.arguments_sha256, "policy_version": decided.policy_version,
    }])  # fmt: skip
    return decided
