"""API keys -> tenants. Keys are stored only as SHA-256 hashes in Redis; the secret is shown once.

A key is `sk-sentrail-<key id>-<secret>`: 32 random bytes of secret, so a plain SHA-256 is a safe
digest (no password stretching needed for high-entropy tokens). Each key carries its tenant, the
models it may use (`*` for all), the policy set to apply, rate limits and session budgets.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from typing import Annotated, Any

import msgspec
import redis.asyncio as aioredis
from msgspec import Meta

from gateway.errors import Forbidden, Unauthorized

PREFIX = "sk-sentrail-"
TenantName = Annotated[str, Meta(pattern=r"^[A-Za-z0-9._\-]{1,64}$")]


class Limits(msgspec.Struct, frozen=True, omit_defaults=True):
    """Per key. 0 means unlimited."""

    requests_per_minute: int = 0
    tokens_per_minute: int = 0
    max_session_steps: int = 0
    max_session_tokens: int = 0
    max_session_seconds: int = 0


class KeyRecord(msgspec.Struct, frozen=True):
    key_id: str
    tenant: TenantName
    models: tuple[str, ...] = ("*",)
    policy: str = "default"
    limits: Limits = Limits()
    created_at: float = 0.0
    roles: tuple[str, ...] = ("agent",)  # agent: call models; approver: decide approval tickets; auditor; admin

    def require_role(self, role: str) -> None:
        if role not in self.roles and "admin" not in self.roles:
            raise Forbidden(f"This API key lacks the {role!r} role.", "authorization")

    def allows_model(self, model: str) -> bool:
        return "*" in self.models or model in self.models

    def require_model(self, model: str) -> None:
        if not self.allows_model(model):
            raise Forbidden(f"This API key may not use model {model!r}.", "model")


ROLES = ("agent", "approver", "auditor", "admin")
DEV_KEY = KeyRecord(key_id="dev", tenant="dev", roles=ROLES)  # development mode: loopback only, every role
_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(KeyRecord)


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class KeyStore:
    """`sentrail:key:<sha256>` -> the record; `sentrail:keys` maps key id -> sha256 for list/revoke."""

    def __init__(self, redis: aioredis.Redis, cache_s: float = 5.0) -> None:
        self.redis = redis
        self.cache_s = cache_s
        self._cache: dict[str, tuple[float, KeyRecord | None]] = {}

    def creation(
        self,
        tenant: str,
        models: tuple[str, ...] = ("*",),
        policy: str = "default",
        limits: Limits | None = None,
        roles: tuple[str, ...] = ("agent",),
    ) -> tuple[str, KeyRecord, list[list[str]]]:
        """A new key: its secret, its record, and the commands that store it, for the audit log to apply in
        the script call that records the creation (both or neither). Raises on an invalid record."""
        unknown = set(roles) - set(ROLES)
        if unknown:
            raise ValueError(f"unknown roles {sorted(unknown)}; known: {', '.join(ROLES)}")
        key_id = secrets.token_hex(4)
        secret = f"{PREFIX}{key_id}-{secrets.token_urlsafe(32)}"
        fields = {"key_id": key_id, "tenant": tenant, "models": models, "policy": policy, "created_at": time.time(),
                  "roles": roles}  # fmt: skip
        fields["limits"] = msgspec.to_builtins(limits or Limits())
        record = msgspec.convert(fields, KeyRecord)  # validates the tenant name
        hashed = digest(secret)
        writes = [["SET", f"sentrail:key:{hashed}", _encoder.encode(record).decode()],
                  ["HSET", "sentrail:keys", key_id, hashed]]  # fmt: skip
        return secret, record, writes

    async def create(self, tenant: str, **options: Any) -> tuple[str, KeyRecord]:
        """`creation`, stored without an audit record (tests and tooling)."""
        secret, record, writes = self.creation(tenant, **options)
        await _apply(self.redis, writes)
        return secret, record

    async def list(self) -> list[KeyRecord]:
        hashes = await self.redis.hvals("sentrail:keys")
        if not hashes:
            return []
        raw = await self.redis.mget([f"sentrail:key:{h.decode()}" for h in hashes])
        return sorted((_decoder.decode(r) for r in raw if r), key=lambda k: k.created_at)

    async def revocation(self, key_id: str) -> list[list[str]] | None:
        """The commands that revoke a key, for the audit log to apply with its record; None: no such key."""
        hashed = await self.redis.hget("sentrail:keys", key_id)
        if hashed is None:
            return None
        return [["DEL", f"sentrail:key:{hashed.decode()}"], ["HDEL", "sentrail:keys", key_id]]

    async def revoke(self, key_id: str) -> bool:
        """`revocation`, applied without an audit record (tests and tooling)."""
        writes = await self.revocation(key_id)
        if writes is not None:
            await _apply(self.redis, writes)
        return writes is not None

    async def authenticate(self, authorization: str | None) -> KeyRecord:
        """The record for a `Bearer` header, or `Unauthorized`. Lookups are cached for `cache_s`."""
        if not authorization or not authorization.lower().startswith("bearer "):
            raise Unauthorized("Missing API key: send 'Authorization: Bearer <key>'.")
        secret = authorization[7:].strip()
        if not secret.startswith(PREFIX):
            raise Unauthorized("Invalid API key.")
        hashed = digest(secret)
        now = time.monotonic()
        cached = self._cache.get(hashed)
        if cached is not None and now - cached[0] < self.cache_s:
            record = cached[1]
        else:
            raw = await self.redis.get(f"sentrail:key:{hashed}")
            record = _decoder.decode(raw) if raw else None
            if len(self._cache) > 10_000:
                self._cache.clear()
            self._cache[hashed] = (now, record)
        if record is None:
            raise Unauthorized("Invalid API key.")
        return record


async def _apply(redis: aioredis.Redis, writes: list[list[str]]) -> None:
    async with redis.pipeline(transaction=True) as pipe:
        for command in writes:
            pipe.execute_command(*command)
        await pipe.execute()
