"""What the review page shows, read from the audit log (and the session store, for masked messages):
sessions with their decision counts, and one session's timeline with a timing waterfall per step."""

from __future__ import annotations

from typing import Any

from gateway.errors import SessionNotFound
from gateway.stores.audit import AuditLog
from gateway.stores.sessions import SessionStore

DECISIONS = ("rail_block", "rail_modify", "rail_label", "policy_bypass", "tool_deny", "tool_approval", "tool_allow")


def _decision(record: dict[str, Any]) -> str | None:
    if record.get("type") == "rail" and not record.get("shadow"):
        return {"block": "rail_block", "modify": "rail_modify", "label": "rail_label"}.get(record.get("action", ""))
    if record.get("type") == "request" and any(f.startswith("policy_bypass:") for f in record.get("flags") or ()):
        return "policy_bypass"
    if record.get("type") == "tool_call":
        return {"deny": "tool_deny", "require_approval": "tool_approval", "allow": "tool_allow"}.get(record["action"])
    return None


async def list_sessions(
    log: AuditLog, tenants: list[str], decision: str | None = None, since: float = 0.0, limit: int = 200
) -> list[dict[str, Any]]:
    """Sessions seen in the audit log, most recent first, with their decision counts."""
    sessions: dict[tuple[str, str], dict[str, Any]] = {}
    for tenant in tenants:
        async for _, record in log.records(tenant):
            if record is None or not record.get("session_id") or record.get("ts", 0) < since:
                continue
            key = (tenant, record["session_id"])
            entry = sessions.setdefault(key, {"tenant": tenant, "session_id": record["session_id"], "steps": 0,
                                              "first": record["ts"], "last": record["ts"],
                                              **dict.fromkeys(DECISIONS, 0)})  # fmt: skip
            entry["last"] = max(entry["last"], record["ts"])
            entry["steps"] += record.get("type") == "request"
            kind = _decision(record)
            if kind:
                entry[kind] += 1
    found = [s for s in sessions.values() if decision is None or s.get(decision)]
    return sorted(found, key=lambda s: s["last"], reverse=True)[:limit]


async def session_timeline(log: AuditLog, sessions: SessionStore, tenant: str, session_id: str) -> dict[str, Any]:
    """One session: its steps (masked messages as the session stores them), each with its audit records
    (rails, tool calls, result with timings), and the tenant chain's verification."""
    records = [r async for _, r in log.records(tenant) if r is not None and r.get("session_id") == session_id]
    if not records:
        raise SessionNotFound(session_id)
    by_request: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        by_request.setdefault(record.get("request_id") or "", []).append(record)
    try:
        stored = {s["request_id"]: s for s in await sessions.steps(tenant, session_id)}
    except SessionNotFound:  # expired from the session store; the audit log keeps the decisions
        stored = {}
    steps = []
    for request_id, items in by_request.items():
        step = stored.get(request_id, {})
        result = next((r for r in items if r["type"] == "result"), {})
        steps.append({
            "request_id": request_id, "at": items[0]["ts"], "trace_id": items[0].get("trace_id"),
            "received": step.get("received", []), "emitted": step.get("emitted", {}),
            "records": items, "timings": result.get("timings", {}), "usage": result.get("usage", {}),
        })  # fmt: skip
    verdict = await log.verify(tenant)
    return {"tenant": tenant, "session_id": session_id, "steps": steps,
            "chain": {"ok": verdict.ok, "message": verdict.message}}  # fmt: skip
