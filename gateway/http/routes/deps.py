"""What every tenant-facing route needs first: the caller's key (401/403 come from here)."""

from __future__ import annotations

from litestar import Request

from gateway.stores.keys import DEV_KEY, KeyRecord


async def authenticate(request: Request) -> KeyRecord:
    state = request.app.state
    if state.settings.dev_mode:
        return DEV_KEY
    return await state.key_store.authenticate(request.headers.get("authorization"))
