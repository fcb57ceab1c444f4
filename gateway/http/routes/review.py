"""The auditor's review page (`/review`) and the JSON it reads: sessions from the audit log with their
decisions, and one session's timeline. Auditor (or admin) keys only; admins may read every tenant."""

from __future__ import annotations

from importlib import resources
from typing import Any

from litestar import MediaType, Request, Response, get

from gateway.errors import InvalidRequest, SessionNotFound
from gateway.http.review import DECISIONS, list_sessions, session_timeline
from gateway.http.routes.deps import authenticate, list_limit
from gateway.stores.audit import SYSTEM
from gateway.stores.keys import KeyRecord
from gateway.stores.sessions import SESSION_ID

PAGE = resources.files("gateway.http").joinpath("static/review.html").read_bytes()


@get("/review", media_type=MediaType.HTML)
async def review_page() -> Response[bytes]:
    """Static: it holds no data; the page asks for a key and calls the routes below with it."""
    headers = {"Content-Security-Policy": "default-src 'self'; style-src 'unsafe-inline'; script-src 'unsafe-inline'",
               "X-Frame-Options": "DENY", "Cache-Control": "no-store"}  # fmt: skip
    return Response(PAGE, media_type=MediaType.HTML, headers=headers)


async def _auditor(request: Request) -> KeyRecord:
    return await authenticate(request, ("auditor",))


async def _tenants(request: Request, key: KeyRecord, tenant: str | None) -> list[str]:
    if "admin" not in key.roles:
        if tenant not in (None, "", key.tenant):
            raise SessionNotFound(f"{tenant}/*")  # other tenants do not exist for this key
        return [key.tenant]
    if tenant:
        return [tenant]
    return [t for t in await request.app.state.audit.tenants() if t != SYSTEM]


@get("/v1/audit/sessions")
async def audit_sessions(
    request: Request, tenant: str | None = None, decision: str | None = None, since: float = 0.0, limit: int = 200
) -> dict[str, Any]:
    key = await _auditor(request)
    if decision is not None and decision not in DECISIONS:
        raise InvalidRequest(f"`decision` must be one of {', '.join(DECISIONS)}.", "decision")
    tenants = await _tenants(request, key, tenant)
    data = await list_sessions(request.app.state.audit, tenants, decision, since, list_limit(limit))
    return {"object": "list", "data": data}


@get("/v1/audit/sessions/{session_id:str}")
async def audit_session(request: Request, session_id: str, tenant: str | None = None) -> dict[str, Any]:
    key = await _auditor(request)
    if not SESSION_ID.match(session_id):
        raise SessionNotFound(session_id[:128])
    (chosen,) = await _tenants(request, key, tenant or key.tenant)
    return await session_timeline(request.app.state.audit, request.app.state.sessions, chosen, session_id)
