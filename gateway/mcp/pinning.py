"""Tool-definition pinning: the first definition (name, description, input schema) of each upstream tool a
tenant sees is pinned by its SHA-256; a later, different definition is a change ("rug pull"), reported and,
by `pinning.on_change`, blocked, sent for approval (a ticket in the approvals store; once approved, the new
definition is pinned), or allowed (pinned anew).

Redis: `sentrail:mcp:{<tenant>}:pins`, a hash: `<server>/<tool>` -> the pinned SHA-256, and
`<server>/<tool>@<sha256>` -> the approval ticket asked for that new definition.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from typing import Any

import mcp_types as types
import redis.asyncio as aioredis

from gateway.stores.approvals import ApprovalNotFound, ApprovalStore, Ticket, new_ticket_id

PIN_SESSION = "_mcp_definitions"  # approval tickets for definition changes belong to no agent session


def definition_sha256(tool: types.Tool) -> str:
    """SHA-256 of the canonical JSON of the tool's name, description and input schema."""
    definition = {"name": tool.name, "description": tool.description or "", "inputSchema": tool.input_schema}
    canonical = json.dumps(definition, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass(frozen=True)
class PinCheck:
    """What the pin says of one definition: `pinned` (first sight or unchanged or accepted), or not with why."""

    status: str  # first_seen | unchanged | changed | approved
    pinned: bool
    previous: str = ""
    ticket: str = ""  # on_change: approval

    @property
    def event(self) -> str:
        return {"first_seen": "mcp_tool_pinned", "changed": "mcp_tool_changed", "approved": "mcp_tool_repinned"}.get(
            self.status, ""
        )


def _key(tenant: str) -> str:
    return f"sentrail:mcp:{{{tenant}}}:pins"


class Pins:
    def __init__(self, redis: aioredis.Redis, approvals: ApprovalStore, on_change: str, ttl_s: float) -> None:
        self.redis = redis
        self.approvals = approvals
        self.on_change = on_change  # block | approval | allow
        self.ttl_s = ttl_s  # how long an approval ticket for a change stays open

    async def check(
        self, tenant: str, server: str, tools: dict[str, str], shown: types.Tool | None = None
    ) -> dict[str, PinCheck]:
        """tool name -> its definition's SHA-256, checked against the tenant's pins in one round trip (more
        only for first sights and changes). `shown`: the new definition, for an approver to read in the ticket."""
        if not tools:
            return {}
        names = sorted(tools)
        fields = [f"{server}/{name}" for name in names]
        pending = [f"{server}/{name}@{tools[name]}" for name in names]
        found = await self.redis.hmget(_key(tenant), fields + pending)
        pinned, tickets = found[: len(names)], found[len(names) :]
        checks: dict[str, PinCheck] = {}
        first: dict[str, str] = {}
        for name, field, pin, ticket in zip(names, fields, pinned, tickets, strict=True):
            digest = tools[name]
            if pin is None:
                first[field] = digest
                checks[name] = PinCheck("first_seen", True)
            elif pin.decode() == digest:
                checks[name] = PinCheck("unchanged", True)
            else:
                checks[name] = await self._changed(tenant, server, name, digest, pin.decode(), ticket, shown)
        if first:  # a concurrent first sight of another definition wins the pin; this one then reads as changed
            async with self.redis.pipeline(transaction=False) as pipe:
                for field, digest in first.items():
                    pipe.hsetnx(_key(tenant), field, digest)
                won = await pipe.execute()
            for (field, _), ok in zip(first.items(), won, strict=True):
                if not ok:
                    checks[field.split("/", 1)[1]] = PinCheck("unchanged", True)
        return checks

    async def _changed(
        self, tenant: str, server: str, name: str, digest: str, previous: str, ticket: Any, shown: types.Tool | None
    ) -> PinCheck:
        field = f"{server}/{name}"
        if self.on_change == "allow":
            await self.redis.hset(_key(tenant), field, digest)
            return PinCheck("changed", True, previous)
        if self.on_change == "block":
            return PinCheck("changed", False, previous)
        if ticket is not None:
            try:
                found = await self.approvals.get(tenant, ticket.decode())
            except ApprovalNotFound:
                found = None
            if found is not None and found.status in ("approved", "delivered"):
                async with self.redis.pipeline(transaction=True) as pipe:
                    pipe.hset(_key(tenant), field, digest)
                    pipe.hdel(_key(tenant), f"{field}@{digest}")
                    await pipe.execute()
                return PinCheck("approved", True, previous, found.id)
            if found is not None and found.status == "pending":
                return PinCheck("changed", False, previous, found.id)
            if found is not None:  # rejected: the change stays refused, and is not asked again
                return PinCheck("changed", False, previous, found.id)
        now = time.time()
        definition = {"description": shown.description or "", "inputSchema": shown.input_schema} if shown else {}
        arguments = json.dumps({"server": server, "tool": name, **definition, "definition_sha256": digest,
                                "pinned_sha256": previous}, ensure_ascii=False)[:16_000]  # fmt: skip
        new = Ticket(
            id=new_ticket_id(), tenant=tenant, session_id=PIN_SESSION, call_id=f"definition:{field}", tool=name,
            arguments=arguments, arguments_sha256=digest, policy_version="", created_at=now,
            expires_at=now + self.ttl_s,
            reason=f"the definition of tool {name!r} on MCP server {server!r} changed since it was pinned",
        )  # fmt: skip
        await self.approvals.create([new])
        if not await self.redis.hsetnx(_key(tenant), f"{field}@{digest}", new.id):
            existing = await self.redis.hget(_key(tenant), f"{field}@{digest}")
            return PinCheck("changed", False, previous, existing.decode() if existing else new.id)
        return PinCheck("changed", False, previous, new.id)
