"""Approval tickets: a tool call the policy says `require_approval` is withheld and a ticket is bound to
exactly that call: {tenant, session, call id, tool, SHA-256 of the canonical arguments, policy version,
expiry}. An approver approves or rejects it; the session's next step then receives exactly that call,
without the model being asked again, once: the claim is one atomic script (approved -> delivered).

Keys: `sentrail:approval:<ticket>` (hash) and, per session, `sentrail:{<tenant>|<session>}:approved`
(ticket ids approved and not yet delivered; the session hash tag keeps it beside the session's keys).
"""

from __future__ import annotations

import secrets
import time
from typing import Annotated, Any, Literal

import msgspec
import redis.asyncio as aioredis

from gateway.errors import GatewayError

TICKET_STATES = ("pending", "approved", "rejected", "delivered")


class ApprovalNotFound(GatewayError):
    error_type = "approval_not_found"

    def __init__(self, ticket: str) -> None:
        super().__init__(f"No approval ticket {ticket!r} for this tenant.", "ticket")


class ApprovalConflict(GatewayError):
    error_type = "approval_conflict"


class ApprovalDecision(msgspec.Struct, forbid_unknown_fields=True):
    decision: Literal["approve", "reject"]
    note: Annotated[str, msgspec.Meta(max_length=2000)] = ""


class Ticket(msgspec.Struct):
    id: str
    tenant: str
    session_id: str
    call_id: str
    tool: str
    arguments: str
    arguments_sha256: str
    policy_version: str
    reason: str
    created_at: float
    expires_at: float
    status: str = "pending"
    decided_by: str = ""
    decided_at: float = 0.0
    note: str = ""
    object: str = "approval"


def new_ticket_id() -> str:
    return f"apr_{secrets.token_hex(12)}"


def _key(ticket: str) -> str:
    return f"sentrail:approval:{ticket}"


def _approved_key(tenant: str, session_id: str) -> str:
    return f"sentrail:{{{tenant}|{session_id}}}:approved"


def _index(tenant: str) -> str:
    return f"sentrail:tenant:{tenant}:approvals"


# Deliver once: only an approved, unexpired ticket of the current policy version moves to delivered.
_CLAIM = """
local status = redis.call('HGET', KEYS[1], 'status')
redis.call('SREM', KEYS[2], ARGV[1])
if status ~= 'approved' then return 0 end
if tonumber(redis.call('HGET', KEYS[1], 'expires_at')) < tonumber(ARGV[2]) then return -1 end
if redis.call('HGET', KEYS[1], 'policy_version') ~= ARGV[3] then return -2 end
redis.call('HSET', KEYS[1], 'status', 'delivered', 'delivered_at', ARGV[2])
return 1
"""

# Decide once: only a pending, unexpired ticket can be approved or rejected.
_DECIDE = """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return 0 end
if status ~= 'pending' then return -1 end
if tonumber(redis.call('HGET', KEYS[1], 'expires_at')) < tonumber(ARGV[3]) then return -2 end
redis.call('HSET', KEYS[1], 'status', ARGV[1], 'decided_by', ARGV[2], 'decided_at', ARGV[3], 'note', ARGV[4])
if ARGV[1] == 'approved' then redis.call('SADD', KEYS[2], ARGV[5]) end
return 1
"""


class ApprovalStore:
    def __init__(self, redis: aioredis.Redis, retention_s: int = 7 * 86400) -> None:
        self.redis = redis
        self.retention_s = retention_s
        self._claim = redis.register_script(_CLAIM)
        self._decide = redis.register_script(_DECIDE)

    async def create(self, tickets: list[Ticket]) -> None:
        async with self.redis.pipeline(transaction=False) as pipe:
            for ticket in tickets:
                fields = {k: str(v) for k, v in msgspec.to_builtins(ticket).items()}
                pipe.hset(_key(ticket.id), mapping=fields)
                pipe.expire(_key(ticket.id), int(ticket.expires_at - ticket.created_at) + self.retention_s)
                pipe.zadd(_index(ticket.tenant), {ticket.id: ticket.created_at})
            await pipe.execute()

    async def get(self, tenant: str, ticket_id: str) -> Ticket:
        raw = await self.redis.hgetall(_key(ticket_id))
        ticket = _decode(raw)
        if ticket is None or ticket.tenant != tenant:
            raise ApprovalNotFound(ticket_id)
        return ticket

    async def list(self, tenant: str, status: str | None = None, limit: int = 100) -> list[Ticket]:
        ids = [raw.decode() for raw in await self.redis.zrevrange(_index(tenant), 0, 999)]
        async with self.redis.pipeline(transaction=False) as pipe:
            for ticket_id in ids:
                pipe.hgetall(_key(ticket_id))
            found = [_decode(raw) for raw in await pipe.execute()] if ids else []
        tickets = [t for t in found if t is not None and (status is None or t.status == status)]
        return tickets[:limit]

    async def decide(self, tenant: str, ticket_id: str, approve: bool, by: str, note: str = "") -> Ticket:
        ticket = await self.get(tenant, ticket_id)
        status = "approved" if approve else "rejected"
        keys = [_key(ticket_id), _approved_key(tenant, ticket.session_id)]
        result = await self._decide(keys=keys, args=[status, by, repr(time.time()), note, ticket_id])
        if result == 0:
            raise ApprovalNotFound(ticket_id)
        if result == -1:
            raise ApprovalConflict(f"Ticket {ticket_id} is already {ticket.status}.", "ticket")
        if result == -2:
            raise ApprovalConflict(f"Ticket {ticket_id} has expired.", "ticket")
        return await self.get(tenant, ticket_id)

    async def claim(self, tenant: str, session_id: str, ticket_ids: list[str], policy_version: str) -> Ticket | None:
        """The first approved ticket of the session that can still be delivered, now delivered."""
        for ticket_id in sorted(ticket_ids):
            keys = [_key(ticket_id), _approved_key(tenant, session_id)]
            if await self._claim(keys=keys, args=[ticket_id, repr(time.time()), policy_version]) == 1:
                return await self.get(tenant, ticket_id)
        return None


def approved_key(tenant: str, session_id: str) -> str:
    return _approved_key(tenant, session_id)


def _decode(raw: dict[bytes, bytes]) -> Ticket | None:
    if not raw:
        return None
    fields: dict[str, Any] = {k.decode(): v.decode() for k, v in raw.items() if k != b"delivered_at"}
    for name in ("created_at", "expires_at", "decided_at"):
        fields[name] = float(fields.get(name) or 0)
    try:
        return msgspec.convert(fields, Ticket)
    except msgspec.ValidationError:
        return None
