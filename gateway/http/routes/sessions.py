"""The tenant's own sessions: list, read one (summary and ordered steps), delete (audited). `agent` role."""

from __future__ import annotations

from typing import Any

from litestar import Request, delete, get

from gateway.errors import SessionNotFound
from gateway.http.routes.deps import audit_deletion, authenticate, list_limit
from gateway.stores.sessions import SESSION_ID


def _checked(session_id: str) -> str:
    if not SESSION_ID.match(session_id):
        raise SessionNotFound(session_id[:128])
    return session_id


@get("/v1/sessions")
async def list_sessions(request: Request, limit: int = 100) -> dict[str, Any]:
    key = await authenticate(request)
    sessions = await request.app.state.sessions.list(key.tenant, list_limit(limit))
    return {"object": "list", "data": sessions}


@get("/v1/sessions/{session_id:str}")
async def get_session(request: Request, session_id: str) -> dict[str, Any]:
    key = await authenticate(request)
    store = request.app.state.sessions
    summary = await store.summary(key.tenant, _checked(session_id))
    return {"session": summary, "steps": await store.steps(key.tenant, session_id)}


@delete("/v1/sessions/{session_id:str}", status_code=200)
async def delete_session(request: Request, session_id: str) -> dict[str, Any]:
    key = await authenticate(request)
    writes = await request.app.state.sessions.deletion(key.tenant, _checked(session_id))
    if writes is None:
        raise SessionNotFound(session_id)
    await audit_deletion(request, key, "session", writes, session_id=session_id)
    return {"id": session_id, "object": "session.deleted", "deleted": True}
