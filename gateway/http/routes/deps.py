"""What every tenant-facing route needs first: the caller's key (401/403 come from here), and the audit
record of a deletion.

Roles are checked here, once: `authenticate` requires the `agent` role unless the route names others,
so a new route is closed to approver- and auditor-only keys until it says otherwise. An `admin` key
holds every role; development mode's key (loopback only) too."""

from __future__ import annotations

from litestar import Request

from gateway.errors import Forbidden, InvalidRequest
from gateway.stores.keys import DEV_KEY, KeyRecord

AGENT = ("agent",)
ANY_ROLE = ()  # any valid key: for harmless metadata (the model list)
MAX_LIST = 1000


def list_limit(limit: int) -> int:
    """A list route's `limit`, which must lie in 1..1000: out of range is the caller's error (400), not a
    value quietly changed into another."""
    if not 1 <= limit <= MAX_LIST:
        raise InvalidRequest(f"`limit` must be between 1 and {MAX_LIST}; got {limit}.", "limit")
    return limit


async def authenticate(request: Request, roles: tuple[str, ...] = AGENT) -> KeyRecord:
    """The caller's key, which must hold one of `roles` (all pass when `roles` is empty)."""
    state = request.app.state
    if state.settings.dev_mode:
        key = DEV_KEY
    else:
        key = await state.key_store.authenticate(request.headers.get("authorization"))
    if roles and "admin" not in key.roles and not set(roles) & set(key.roles):
        named = " or ".join(repr(role) for role in roles)
        raise Forbidden(f"This API key lacks the {named} role.", "authorization")
    return key


async def audit_deletion(request: Request, key: KeyRecord, what: str, writes: list[list[str]], **ids: str) -> None:
    """Delete (`writes`, the store's commands) and record `<what>_deleted` on the tenant's audit chain, in one
    script call: who (key id), which (`ids`), when (the record's `ts`). Both happen or neither does."""
    request_id = request.scope["sentrail_request_id"]  # type: ignore[typeddict-item]
    event = {"type": f"{what}_deleted", **ids, "key_id": key.key_id, "request_id": request_id}
    await request.app.state.audit.append(key.tenant, [event], writes)
