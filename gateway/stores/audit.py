"""The audit log: an append-only, hash-chained record per tenant, in a Redis Stream (plus an optional
JSONL file sink), written before the response that it records completes.

Each record holds `seq` (1, 2, ...), `prev` (the previous record's hash; 64 zeros for the first) and
`hash` = SHA-256 of the record's canonical JSON without `hash`. An append is one compare-and-set script
on the tenant's head key (`seq:hash`): it adds the records only if the head is still the one they were
chained onto, else it returns the current head and the records are chained again onto that; each
replica remembers the last head it saw, so the common case is one round trip (shared with the step's
session writes), and concurrent gateway replicas extend one chain. `verify` recomputes
the chain and names the first record that was edited, deleted, inserted or reordered. Records carry
identifiers, decisions, reasons, versions, hashes and counts: no message content unless
`audit_content` is on, and then only the masked text the session stores.

Keys: `sentrail:audit:{<tenant>}:stream` and `sentrail:audit:{<tenant>}:head` (one hash slot each tenant).
System events (policy reloads, key changes) go to the `_system` chain.
"""

from __future__ import annotations

import asyncio
import contextvars
import hashlib
import json
import os
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import redis.asyncio as aioredis
import structlog

from gateway.errors import retrieve_outcome
from gateway.stores.sessions import APPLY_WRITES

log = structlog.get_logger("sentrail.audit")
Command = Sequence[str]  # one Redis command: its name, then its arguments, as text
_json = msgspec.json.Encoder()
GENESIS = "0" * 64
SYSTEM = "_system"


def _stream(tenant: str) -> str:
    return f"sentrail:audit:{{{tenant}}}:stream"


def _head(tenant: str) -> str:
    return f"sentrail:audit:{{{tenant}}}:head"


def canonical(record: dict[str, Any]) -> bytes:
    return json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str).encode()


def seal(record: dict[str, Any]) -> str:
    return hashlib.sha256(canonical({k: v for k, v in record.items() if k != "hash"})).hexdigest()


# KEYS: head, stream. ARGV: the head the records were chained onto ("" for none), the new head, the
# caller's write commands as one JSON array of string arrays, then the records. The caller's writes always
# apply (once: a retry sends none); the records only onto the expected head. (The writes travel as one
# JSON argument: the client packs 4 arguments instead of ~60, a third of the CPU of a step's commit.)
_APPEND = (
    APPLY_WRITES
    + """
apply_writes(cjson.decode(ARGV[3]))
local head = redis.call('GET', KEYS[1]) or ''
if head ~= ARGV[1] then return {0, head} end
for i = 4, #ARGV do redis.call('XADD', KEYS[2], '*', 'r', ARGV[i]) end
redis.call('SET', KEYS[1], ARGV[2])
return {1, ARGV[2]}
"""
)


@dataclass
class _Append:
    """One caller's append, waiting for its tenant's writer."""

    events: list[dict[str, Any]]
    writes: Sequence[Command]
    at: float
    done: asyncio.Future[list[dict[str, Any]]]


class AuditLog:
    def __init__(self, redis: aioredis.Redis, jsonl: Path | None = None, max_batch: int = 256) -> None:
        self.redis = redis
        self.jsonl = jsonl
        self.max_batch = max_batch
        self._heads: dict[str, bytes] = {}  # tenant -> the last head this replica saw ("seq:hash")
        self._queues: dict[str, list[_Append]] = {}  # tenant -> appends waiting for the tenant's writer
        self._writers: dict[str, asyncio.Task[None]] = {}
        self._append = redis.register_script(_APPEND)  # EVALSHA, loaded again if Redis lost it

    async def append(
        self, tenant: str, events: Iterable[dict[str, Any]], writes: Sequence[Command] = ()
    ) -> list[dict[str, Any]]:
        """Chain `events` (each: `type` plus fields) onto the tenant's log, atomically; the sealed records.
        `writes` are the caller's own Redis commands, applied in the same script call (one round trip,
        one command, for a step's session record and its audit records); once, even if the chain retries.

        Group commit: one writer per tenant chains whatever appends arrived while its last transaction
        was in flight and writes them in one transaction, so concurrent requests in one replica never
        race each other for the head (they would retry, O(concurrency) round trips each) and share
        round trips under load. A caller that is cancelled while waiting leaves its records to be written."""
        events = list(events)
        if not events:
            return []
        done: asyncio.Future[list[dict[str, Any]]] = asyncio.get_running_loop().create_future()
        done.add_done_callback(retrieve_outcome)
        self._queues.setdefault(tenant, []).append(_Append(events, writes, time.time(), done))
        if tenant not in self._writers:
            # its own context: the writer serves many requests and carries none's log or trace context
            self._writers[tenant] = asyncio.create_task(self._write(tenant), context=contextvars.Context())
        return await asyncio.shield(done)

    async def _write(self, tenant: str) -> None:
        """The tenant's writer: commits queued appends, a batch per transaction, until none are left."""
        try:
            while queue := self._queues.get(tenant):
                batch, self._queues[tenant] = queue[: self.max_batch], queue[self.max_batch :]
                try:
                    sealed = await self._commit(tenant, batch)
                except BaseException as exc:  # fail closed: every caller of the batch gets the error
                    for item in batch:
                        if not item.done.done():
                            item.done.set_exception(exc)
                    if not isinstance(exc, Exception):
                        raise
                    continue
                for item, records in zip(batch, sealed, strict=True):
                    if not item.done.done():
                        item.done.set_result(records)
        finally:
            del self._writers[tenant]
            if not self._queues.get(tenant):
                self._queues.pop(tenant, None)

    async def _commit(self, tenant: str, batch: list[_Append]) -> list[list[dict[str, Any]]]:
        head = self._heads.get(tenant)
        if head is None:
            head = await self.redis.get(_head(tenant)) or b""
        writes = _json.encode([command for item in batch for command in item.writes])
        keys = [_head(tenant), _stream(tenant)]
        while True:  # chain onto `head`; if another replica moved it, chain onto what it is now
            seq, prev = _parse_head(head)
            sealed = []
            for item in batch:
                records = []
                for event in item.events:
                    seq += 1
                    record = {"seq": seq, "ts": item.at, "tenant": tenant, **event, "prev": prev}
                    record["hash"] = prev = seal(record)
                    records.append(record)
                sealed.append(records)
            new_head = f"{seq}:{prev}".encode()
            lines = [canonical(record) for records in sealed for record in records]
            done, head = await self._append(keys, [head, new_head, writes, *lines])
            writes = b"[]"
            if done:
                break
        self._heads[tenant] = new_head
        if self.jsonl is not None:
            await asyncio.to_thread(_append_lines, self.jsonl, b"".join(line + b"\n" for line in lines))
        return sealed

    async def records(self, tenant: str) -> AsyncIterator[tuple[str, dict[str, Any] | None]]:
        """(stream id, record or None when unreadable), oldest first, in pages."""
        start = "-"
        while True:
            page = await self.redis.xrange(_stream(tenant), min=start, count=1000)
            if not page:
                return
            for entry_id, fields in page:
                try:
                    record = json.loads(fields[b"r"])
                except (KeyError, ValueError):
                    record = None
                yield entry_id.decode(), record
            start = "(" + page[-1][0].decode()

    async def verify(self, tenant: str) -> Verdict:
        expected_seq, prev, count = 1, GENESIS, 0
        async for entry_id, record in self.records(tenant):
            count += 1
            if record is None:
                return Verdict(False, count, f"record {entry_id} is not readable JSON", entry_id)
            where = f"record {entry_id} (seq {record.get('seq')})"
            if record.get("hash") != seal(record):
                return Verdict(False, count, f"{where} was edited: its hash does not match its content", entry_id)
            if record.get("seq") != expected_seq or record.get("prev") != prev:
                what = "is out of order" if record.get("seq", 0) < expected_seq else "follows a deleted record"
                if record.get("seq") == expected_seq:
                    what = "does not chain onto the record before it"
                return Verdict(False, count, f"{where} {what} (expected seq {expected_seq})", entry_id)
            expected_seq, prev = expected_seq + 1, record["hash"]
        head_seq, head_hash = _parse_head(await self.redis.get(_head(tenant)))
        if (head_seq, head_hash) != (expected_seq - 1, prev):
            return Verdict(False, count, f"the chain ends at seq {expected_seq - 1} but its head says {head_seq}: "
                           "records were removed from the end", None)  # fmt: skip
        return Verdict(True, count, f"{count} records, chain intact, head {prev[:16]}", None)

    async def tenants(self) -> list[str]:
        found = set()
        async for key in self.redis.scan_iter(match="sentrail:audit:{*}:head", count=1000):
            found.add(key.decode()[len("sentrail:audit:{") : -len("}:head")])
        return sorted(found)


def _append_lines(path: Path, data: bytes) -> None:
    with path.open("ab") as sink:
        sink.write(data)
        sink.flush()
        os.fsync(sink.fileno())


@dataclass
class Verdict:
    ok: bool
    records: int
    message: str
    first_bad: str | None


def _parse_head(raw: bytes | None) -> tuple[int, str]:
    if not raw:
        return 0, GENESIS
    seq, _, digest = raw.decode().partition(":")
    return int(seq), digest


def step_events(run: Any, step: Any, content: bool, rails_version: str) -> list[dict[str, Any]]:
    """A chat step as audit events: the request accepted, each rail and tool-policy decision, the result."""
    ctx, request = run.ctx, run.request
    base = {"session_id": ctx.session_id, "request_id": ctx.request_id, "trace_id": _trace_id()}
    accepted: dict[str, Any] = {
        "type": "request", **base, "api": run.api, "model": request.model, "key_id": ctx.key.key_id,
        "messages": len(request.messages), "received": len(step.received), "flags": step.flags,
        "labels_added": step.labels,
    }  # fmt: skip
    if content:
        accepted["content"] = step.received
    events = [accepted]
    for decision in step.rails:
        labelled = {"label": decision.label, "message": decision.message} if decision.label else {}
        events.append({"type": "rail", **base, "rail": decision.rail, "stage": decision.stage,
                       "action": decision.action, "reason": decision.reason, "shadow": decision.shadow,
                       "rails_version": rails_version, **labelled})  # fmt: skip
    for decision in step.tool_calls:
        events.append({"type": "tool_call", **base, "call_id": decision.call_id, "tool": decision.tool,
                       "action": decision.action, "rule": decision.rule, "reason": decision.reason,
                       "policy_version": decision.policy_version, "shadow": decision.shadow,
                       "ticket": decision.ticket,
                       "arguments_sha256": _arguments_sha256(run, decision.call_id)})  # fmt: skip
    emitted = step.emitted
    result: dict[str, Any] = {
        "type": "result", **base, "finish_reason": emitted.get("finish_reason"),
        "tool_calls": [c["id"] for c in emitted.get("tool_calls", ())], "usage": step.usage,
        "content_sha256": hashlib.sha256(emitted.get("content", "").encode()).hexdigest(),
        "timings": step.timings,
    }  # fmt: skip
    if content:
        result["content"] = emitted.get("content", "")
    events.append(result)
    return events


def _arguments_sha256(run: Any, call_id: str) -> str | None:
    from rails.tools.decide import canonical_arguments

    if run.judge is None or call_id not in run.judge.arguments:
        return None
    return hashlib.sha256(canonical_arguments(run.judge.arguments[call_id]).encode()).hexdigest()


def _trace_id() -> str | None:
    from opentelemetry import trace

    context = trace.get_current_span().get_span_context()
    return format(context.trace_id, "032x") if context.is_valid else None
