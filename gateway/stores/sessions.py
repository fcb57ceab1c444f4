"""Agent sessions in Redis, always scoped by tenant.

One session is four keys sharing a hash tag (one slot, should a Cluster layout ever be wired in):
  meta    hash: created_at, updated_at, steps, tokens_in, tokens_out, tool_calls
  steps   list: one JSON record per step, in order (list position = step number)
  calls   hash: tool-call id -> the call Sentrail emitted (name, arguments, step, decision, answered)
  labels  set: data-flow labels; only ever added to
  prov    hash: the provenance index, value key -> the places it appeared (one JSON array a line; see
          rails/tools/provenance.py): merged by the `PROVMERGE` write, read per step for its calls' values
  texts   list: the prompts (and documents the user pointed at), normalized, searched by phrase
  seen    hash: fingerprints of each message judged, each assistant text emitted, each judged request's
          chain head -> "" (gateway/steps/history.py: what a resent history needs no second judgement for)
  masked  hash: fingerprint of a message a rail masked -> the message as the engine saw it
plus a per-tenant index (sorted set by last update) for listing.

Hot path: `begin` reads the session in one pipelined round trip; the step's writes go in one atomic
call, shared with its audit records (`step_writes`), or one MULTI/EXEC (`commit`). A client that
edits or drops its resent history changes nothing stored here; what it edits or invents is judged as new.
"""

from __future__ import annotations

import re
import time
import uuid
from dataclasses import dataclass
from typing import Any

import msgspec
import redis.asyncio as aioredis

from gateway.errors import BudgetExceeded, InvalidRequest, SessionNotFound
from gateway.stores.approvals import approved_key
from gateway.stores.keys import KeyRecord
from protocol.openai import ChatCompletionRequest, ToolMessage
from rails.pipeline import Decision
from rails.tools.provenance import (
    ORIGINS_PER_KEY,
    PROMPT,
    Origin,
    Texts,
    ValueIndex,
    decode_origins,
    decode_text,
    encode_origin,
    encode_text,
)

SESSION_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")
_encoder = msgspec.json.Encoder()


@dataclass(frozen=True)
class Lookups:
    """What a step reads of the session's seen fingerprints, in the round trip that loads the session:
    `prefix` (the chain head of the messages before the last assistant turn: a client that resent the
    previous request as it was needs nothing more for them), `near` (the fingerprints from there on), and
    `far` (those before it: read in a second round trip only when the prefix is not found)."""

    prefix: str | None
    near: list[str]
    far: list[str]


class ToolCallRecord(msgspec.Struct, omit_defaults=True):
    name: str
    arguments: str
    step: int
    decision: str = "allow"  # allow | deny | require_approval (withheld calls are recorded too)
    answered: bool = False
    pointed: bool = False  # an argument came from the user's messages: the user pointed at its result


class Step(msgspec.Struct):
    """What one request did: what arrived, what was emitted, what it cost, what was flagged."""

    at: float
    request_id: str
    api: str
    model: str
    received: list[dict[str, Any]] = []
    emitted: dict[str, Any] = {}
    usage: dict[str, int] = {}
    flags: list[str] = []
    rails: list[Decision] = []  # every rail decision of the step, with its reason
    tool_calls: list[Any] = []  # every tool-policy decision of the step (ToolDecision)
    labels: list[str] = []  # labels this step added to the session
    timings: dict[str, float] = {}  # phase -> ms since the request arrived (admitted, input_rails, first_token...)


class SessionState(msgspec.Struct):
    session_id: str
    tenant: str
    created_at: float
    updated_at: float
    steps: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    tool_calls: int = 0
    labels: list[str] = []
    calls: dict[str, ToolCallRecord] = {}
    approved: list[str] = []  # approval tickets approved and not yet delivered


class SessionSummary(msgspec.Struct):
    id: str
    created_at: float
    updated_at: float
    steps: int
    tokens_in: int
    tokens_out: int
    tool_calls: int
    labels: list[str]
    object: str = "session"


def resolve_session_id(header: str | None, request: ChatCompletionRequest | None = None) -> tuple[str, bool]:
    """(session id, is_new): the `X-Session-Id` header, else `metadata.session_id`, else a new id."""
    candidate = header
    if not candidate and request is not None and request.metadata:
        candidate = request.metadata.get("session_id")
    if not candidate:
        return f"sess_{uuid.uuid4().hex}", True
    if not SESSION_ID.match(candidate):
        raise InvalidRequest("Session ids are 1-128 characters of A-Z a-z 0-9 . _ : -", "X-Session-Id")
    return candidate, False


def _keys(tenant: str, session_id: str) -> tuple[str, str, str, str]:
    tag = f"sentrail:{{{tenant}|{session_id}}}"
    return f"{tag}:meta", f"{tag}:steps", f"{tag}:calls", f"{tag}:labels"


def _prov_key(tenant: str, session_id: str) -> str:
    return f"sentrail:{{{tenant}|{session_id}}}:prov"


def _texts_key(tenant: str, session_id: str) -> str:
    return f"sentrail:{{{tenant}|{session_id}}}:texts"


def _seen_key(tenant: str, session_id: str) -> str:
    return f"sentrail:{{{tenant}|{session_id}}}:seen"


def _masked_key(tenant: str, session_id: str) -> str:
    return f"sentrail:{{{tenant}|{session_id}}}:masked"


# The session's provenance index grows by merging: each origin line is added to its key's lines unless
# already there; beyond `cap` lines a key takes only prompt origins (the ones that make a value trusted),
# and beyond `max_keys` keys no new key is added (bounded memory per session).
# Command: PROVMERGE key cap max_keys (field line is_prompt)...
# Applied by `APPLY_WRITES` inside the step's one script call, with the generic commands around it.
APPLY_WRITES = r"""
local function provmerge(c)
  local key, cap, max_keys = c[2], tonumber(c[3]), tonumber(c[4])
  local size = redis.call('HLEN', key)
  for i = 5, #c, 3 do
    local field, line, prompt = c[i], c[i + 1], c[i + 2] == '1'
    local current = redis.call('HGET', key, field)
    if not current then
      if size < max_keys then redis.call('HSET', key, field, line); size = size + 1 end
    elseif not string.find('\n' .. current .. '\n', '\n' .. line .. '\n', 1, true) then
      local _, lines = string.gsub(current, '\n', '')
      if lines + 1 < cap or prompt then redis.call('HSET', key, field, current .. '\n' .. line) end
    end
  end
end
local function apply_writes(commands)
  for _, command in ipairs(commands) do
    if command[1] == 'PROVMERGE' then provmerge(command) else redis.call(unpack(command)) end
  end
end
"""
_COMMIT = APPLY_WRITES + "apply_writes(cjson.decode(ARGV[1]))"
PROV_MAX_KEYS, PROV_MAX_TEXTS = 200_000, 500  # values, and texts kept (each <= 16k chars: a step reads all)


def _index(tenant: str) -> str:
    return f"sentrail:tenant:{tenant}:sessions"


def message_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    return "".join(getattr(part, "text", "") for part in content or ())


class PendingStep:
    """A step between `begin` and `commit`: the loaded state and what arrived."""

    def __init__(self, state: SessionState, key: KeyRecord, is_new: bool) -> None:
        self.state = state
        self.key = key
        self.is_new = is_new
        self.received: list[dict[str, Any]] = []
        self.answered: list[str] = []
        self.tool_results: list[str] = []  # ids of calls Sentrail emitted whose results arrived now
        self.new_labels: set[str] = set()
        self.flags: list[str] = []
        self.index = ValueIndex()  # where this step's new values came from (provenance), merged at commit
        self.pointed: dict[str, bool] = {}  # call id -> its arguments came from the user's messages
        # History integrity (gateway/steps/history.py): the request's fingerprints the session has seen, the
        # indices of the messages this step judges, and what to record for them ("" or the masked message).
        self.seen: set[str] = set()
        self.masked: dict[str, bytes] = {}
        self.fresh: list[int] = []
        self.judged: tuple[dict[str, str], dict[str, str]] = ({}, {})  # (seen, masked) to record

    @property
    def number(self) -> int:
        return self.state.steps + 1

    def observe(self, request: ChatCompletionRequest) -> None:
        """Record what arrived (the fresh messages); flag tool results that answer no call Sentrail emitted here."""
        for index in self.fresh:
            message = request.messages[index]
            if isinstance(message, ToolMessage):
                call = self.state.calls.get(message.tool_call_id)
                known = call is not None
                if not known:
                    self.flags.append(f"unknown_tool_call_id:{message.tool_call_id}")
                else:
                    self.tool_results.append(message.tool_call_id)
                    if not call.answered:
                        self.answered.append(message.tool_call_id)
                item = {"role": "tool", "tool_call_id": message.tool_call_id, "known": known}
                self.received.append({**item, "content": message_text(message.content)})
            else:
                self.received.append(
                    {"role": type(message).__struct_config__.tag, "content": message_text(message.content)}
                )

    def check_budgets(self, now: float) -> int | None:
        """Raise `BudgetExceeded` naming the spent budget; return the tokens left (None: unlimited)."""
        limits, state = self.key.limits, self.state
        if limits.max_session_steps and state.steps >= limits.max_session_steps:
            raise BudgetExceeded(f"Session budget max_session_steps={limits.max_session_steps} is spent.", "budget")
        if limits.max_session_seconds and now - state.created_at > limits.max_session_seconds:
            raise BudgetExceeded(f"Session budget max_session_seconds={limits.max_session_seconds} is spent.", "budget")
        if limits.max_session_tokens:
            left = limits.max_session_tokens - state.tokens_in - state.tokens_out
            if left <= 0:
                raise BudgetExceeded(
                    f"Session budget max_session_tokens={limits.max_session_tokens} is spent.", "budget"
                )
            return left
        return None


class SessionStore:
    def __init__(self, redis: aioredis.Redis, ttl_s: int) -> None:
        self.redis = redis
        self.ttl_s = ttl_s
        self._commit = redis.register_script(_COMMIT)

    async def begin(self, key: KeyRecord, session_id: str, is_new: bool, lookups: Lookups | None = None) -> PendingStep:
        """The session's state, and which of the request's fingerprints it has seen (`lookups`), in one
        round trip; a second one only when the history's prefix is not the one the session judged."""
        state, seen, masked = None, set(), {}
        if not is_new:
            tenant = key.tenant
            async with self.redis.pipeline(transaction=False) as pipe:
                _queue_load(pipe, tenant, session_id)
                if lookups is not None:
                    asked = ([lookups.prefix] if lookups.prefix else []) + lookups.near
                    pipe.hmget(_seen_key(tenant, session_id), asked or ["-"])
                    pipe.hgetall(_masked_key(tenant, session_id))
                results = await pipe.execute()
            state = _state(tenant, session_id, *results[:4])
            if state is not None and lookups is not None:
                seen = {k for k, found in zip(asked, results[4], strict=False) if found is not None}
                masked = {k.decode(): v for k, v in results[5].items()}
                if lookups.far and lookups.prefix not in seen:  # an edited or new history: every fingerprint
                    found = await self.redis.hmget(_seen_key(tenant, session_id), lookups.far)
                    seen |= {k for k, value in zip(lookups.far, found, strict=True) if value is not None}
        now = time.time()
        if state is None:
            state = SessionState(session_id, key.tenant, created_at=now, updated_at=now)
            is_new = True
        pending = PendingStep(state, key, is_new)
        pending.seen, pending.masked = seen, masked
        return pending

    async def load(self, tenant: str, session_id: str) -> SessionState | None:
        return (await self._load_many(tenant, [session_id]))[0]

    async def _load_many(self, tenant: str, session_ids: list[str]) -> list[SessionState | None]:
        """Read sessions in one pipelined round trip; None for the ones that do not exist."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for session_id in session_ids:
                _queue_load(pipe, tenant, session_id)
            results = await pipe.execute()
        return [_state(tenant, session_id, *results[4 * i : 4 * i + 4]) for i, session_id in enumerate(session_ids)]

    async def commit(self, pending: PendingStep, step: Step, emitted_calls: dict[str, ToolCallRecord]) -> None:
        """Write the whole step atomically (one script call)."""
        await self._commit([], [_encoder.encode(self.step_writes(pending, step, emitted_calls)).decode()])

    async def provenance(self, tenant: str, session_id: str, keys: set[str]) -> ValueIndex:
        """The stored origins of these value keys, and the session's texts searched by phrase (one round trip)."""
        ordered = sorted(keys) or ["v:"]
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hmget(_prov_key(tenant, session_id), ordered)
            pipe.lrange(_texts_key(tenant, session_id), 0, -1)
            found, lines = await pipe.execute()
        entries = {key: decode_origins(raw) for key, raw in zip(ordered, found, strict=True) if raw}
        return ValueIndex(entries, Texts([text for line in lines if (text := decode_text(line)) is not None]))

    def step_writes(
        self, pending: PendingStep, step: Step, emitted_calls: dict[str, ToolCallRecord]
    ) -> list[list[str]]:
        """The step's writes as Redis commands (text arguments): for `commit`, or for the audit log to apply
        in the same script call as the step's audit records (one command and one round trip for both)."""
        state = pending.state
        meta_key, steps_key, calls_key, labels_key = _keys(state.tenant, state.session_id)
        now, ttl = repr(step.at), str(self.ttl_s)
        writes = [
            ["HSETNX", meta_key, "created_at", repr(state.created_at)],
            ["HSET", meta_key, "updated_at", now],
            ["HINCRBY", meta_key, "steps", "1"],
            ["HINCRBY", meta_key, "tokens_in", str(step.usage.get("input", 0))],
            ["HINCRBY", meta_key, "tokens_out", str(step.usage.get("output", 0))],
            ["HINCRBY", meta_key, "tool_calls", str(len(emitted_calls))],
            ["RPUSH", steps_key, _encoder.encode(step).decode()],
        ]
        prov_key = _prov_key(state.tenant, state.session_id)
        updates = {call_id: _encoder.encode(call).decode() for call_id, call in emitted_calls.items()}
        for call_id in pending.answered:
            updates[call_id] = _encoder.encode(msgspec.structs.replace(state.calls[call_id], answered=True)).decode()
        if updates:
            writes.append(["HSET", calls_key, *(item for pair in updates.items() for item in pair)])
        if pending.new_labels:
            writes.append(["SADD", labels_key, *sorted(pending.new_labels)])
        if pending.index.entries:
            limits = [str(ORIGINS_PER_KEY), str(PROV_MAX_KEYS)]
            writes.append(["PROVMERGE", prov_key, *limits, *_prov_lines(pending.index)])
        seen_key, masked_key = _seen_key(state.tenant, state.session_id), _masked_key(state.tenant, state.session_id)
        for hash_key, values in zip((seen_key, masked_key), pending.judged, strict=True):
            if values:
                writes.append(["HSET", hash_key, *(item for pair in values.items() for item in pair)])
        texts_key = _texts_key(state.tenant, state.session_id)
        if pending.index.texts.lines:
            writes.append(["RPUSH", texts_key, *(encode_text(o, t) for o, t in pending.index.texts.lines)])
            writes.append(["LTRIM", texts_key, str(-PROV_MAX_TEXTS), "-1"])
        keys = (meta_key, steps_key, calls_key, labels_key, prov_key, texts_key, seen_key, masked_key)
        writes += [["EXPIRE", key, ttl] for key in keys]
        writes.append(["ZADD", _index(state.tenant), now, state.session_id])
        stale = repr(step.at - self.ttl_s)  # idle longer than the TTL: its keys have expired, drop it from the index
        writes.append(["ZREMRANGEBYSCORE", _index(state.tenant), "-inf", f"({stale}"])
        return writes

    async def steps(self, tenant: str, session_id: str) -> list[dict[str, Any]]:
        _, steps_key, _, _ = _keys(tenant, session_id)
        raw = await self.redis.lrange(steps_key, 0, -1)
        if not raw and await self.load(tenant, session_id) is None:
            raise SessionNotFound(session_id)
        return [{"step": n, **msgspec.json.decode(item)} for n, item in enumerate(raw, start=1)]

    async def summary(self, tenant: str, session_id: str) -> SessionSummary:
        state = await self.load(tenant, session_id)
        if state is None:
            raise SessionNotFound(session_id)
        return _summary(state)

    async def list(self, tenant: str, limit: int = 100) -> list[SessionSummary]:
        ids = [raw.decode() for raw in await self.redis.zrevrange(_index(tenant), 0, limit - 1)]
        states = await self._load_many(tenant, ids) if ids else []
        expired = [session_id for session_id, state in zip(ids, states, strict=True) if state is None]
        if expired:  # sessions expire by TTL; drop them from the index too
            await self.redis.zrem(_index(tenant), *expired)
        return [_summary(state) for state in states if state is not None]

    async def deletion(self, tenant: str, session_id: str) -> list[list[str]] | None:
        """The commands that delete the session, for the audit log to apply in the script call that records
        the deletion (both or neither); None when the tenant has no such session."""
        keys = [*_keys(tenant, session_id), _prov_key(tenant, session_id), _texts_key(tenant, session_id),
                _seen_key(tenant, session_id), _masked_key(tenant, session_id),
                approved_key(tenant, session_id)]  # fmt: skip
        if not await self.redis.exists(*keys):
            return None
        return [["DEL", *keys], ["ZREM", _index(tenant), session_id]]


def _queue_load(pipe: Any, tenant: str, session_id: str) -> None:
    meta_key, _, calls_key, labels_key = _keys(tenant, session_id)
    pipe.hgetall(meta_key)
    pipe.hgetall(calls_key)
    pipe.smembers(labels_key)
    pipe.smembers(approved_key(tenant, session_id))


def _state(tenant: str, session_id: str, meta: dict, calls: dict, labels: set, approved: set) -> SessionState | None:
    if not meta:
        return None
    return SessionState(
        session_id,
        tenant,
        created_at=float(meta[b"created_at"]),
        updated_at=float(meta[b"updated_at"]),
        steps=int(meta.get(b"steps", 0)),
        tokens_in=int(meta.get(b"tokens_in", 0)),
        tokens_out=int(meta.get(b"tokens_out", 0)),
        tool_calls=int(meta.get(b"tool_calls", 0)),
        labels=sorted(label.decode() for label in labels),
        calls={k.decode(): msgspec.json.decode(v, type=ToolCallRecord) for k, v in calls.items()},
        approved=sorted(ticket.decode() for ticket in approved),
    )


def _prov_lines(index: ValueIndex) -> list[str]:
    out: list[str] = []
    encoded: dict[Origin, str] = {}  # one text's keys share its origin: encode it once
    for key, origins in index.entries.items():
        for origin in origins:
            line = encoded.get(origin)
            if line is None:
                line = encoded[origin] = encode_origin(origin)
            out += [key, line, "1" if origin.source in PROMPT else "0"]
    return out


def _summary(state: SessionState) -> SessionSummary:
    return SessionSummary(
        id=state.session_id,
        created_at=state.created_at,
        updated_at=state.updated_at,
        steps=state.steps,
        tokens_in=state.tokens_in,
        tokens_out=state.tokens_out,
        tool_calls=state.tool_calls,
        labels=state.labels,
    )
