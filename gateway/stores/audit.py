"""The audit log: an append-only, hash-chained record per tenant, in a Redis Stream (plus an optional
JSONL file sink), written before the response that it records completes.

Each record holds `seq` (1, 2, ...), `prev` (the previous record's hash; 64 zeros for the first) and
`hash`: with an audit key, HMAC-SHA256 of the record's canonical JSON without `hash` (the record then
carries `kid` and `chain`; see gateway/stores/audit_seal.py), else SHA-256 of it (unsealed). An append
is one compare-and-set script on the tenant's head key (`seq:hash`, sealed: `seq:hash:kid:tag`): it adds
the records only if the head is still the one they were chained onto, else it returns the current head
and the records are chained again onto that; each replica remembers the last head it saw, so the common
case is one round trip (shared with the step's session writes), and concurrent gateway replicas extend
one chain. `verify` checks every seal and link and the head, and names the first record that was edited,
deleted, inserted or reordered. `trim` exports a chain's oldest records, then removes them, leaving a
sealed anchor that verification starts from. Records carry identifiers, decisions, reasons, versions,
hashes and counts: no message content unless `audit_content` is on, and then only the masked text the
session stores.

Keys: `sentrail:audit:{<tenant>}:stream`, `...:head` and `...:anchor` (one hash slot each tenant).
System events (policy reloads, key changes, trims) go to the `_system` chain.
"""

from __future__ import annotations

import asyncio
import contextvars
import hashlib
import json
import os
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import redis.asyncio as aioredis
import structlog

from gateway.errors import AuditUnavailable, retrieve_outcome
from gateway.settings import Settings
from gateway.stores.audit_seal import (
    GENESIS,
    Anchor,
    AuditSealError,
    ChainCheck,
    Head,
    Keyring,
    audit_keyring,
    canonical,
    plain_hash,
)
from gateway.stores.sessions import APPLY_WRITES

log = structlog.get_logger("sentrail.audit")
Command = Sequence[str]  # one Redis command: its name, then its arguments, as text
_json = msgspec.json.Encoder()
SYSTEM = "_system"


def _stream(tenant: str) -> str:
    return f"sentrail:audit:{{{tenant}}}:stream"


def _head(tenant: str) -> str:
    return f"sentrail:audit:{{{tenant}}}:head"


def _anchor(tenant: str) -> str:
    return f"sentrail:audit:{{{tenant}}}:anchor"


# KEYS: head, stream. ARGV: the head the records were chained onto ("" for none), the new head, the
# caller's write commands as one JSON array of string arrays, then the records. The writes apply with the
# records, onto the expected head, or neither does (the caller chains again and resends both): a step's
# session record, a deletion, never lands without its audit record. (The writes travel as one JSON
# argument: the client packs 4 arguments instead of ~60, a third of the CPU of a step's commit.)
_APPEND = (
    APPLY_WRITES
    + """
local head = redis.call('GET', KEYS[1]) or ''
if head ~= ARGV[1] then return {0, head} end
apply_writes(cjson.decode(ARGV[3]))
for i = 4, #ARGV do redis.call('XADD', KEYS[2], '*', 'r', ARGV[i]) end
redis.call('SET', KEYS[1], ARGV[2])
return {1, ARGV[2]}
"""
)

# KEYS: anchor, stream. ARGV: the anchor the trim verified from ('' for none), the new anchor, the first
# stream id to keep. The anchor moves and the records before it go together, or neither does.
_TRIM = """
if (redis.call('GET', KEYS[1]) or '') ~= ARGV[1] then return -1 end
redis.call('SET', KEYS[1], ARGV[2])
return redis.call('XTRIM', KEYS[2], 'MINID', ARGV[3])
"""


@dataclass
class _Append:
    """One caller's append, waiting for its tenant's writer."""

    events: list[dict[str, Any]]
    writes: Sequence[Command]
    at: float
    done: asyncio.Future[list[dict[str, Any]]]


class AuditLog:
    def __init__(
        self, redis: aioredis.Redis, jsonl: Path | None = None, max_batch: int = 256, keyring: Keyring | None = None
    ) -> None:
        """`keyring`: its current key seals what this log appends (None or no current key: unsealed, and
        appending to a chain that is already sealed fails); all its keys verify."""
        self.redis = redis
        self.jsonl = jsonl
        self.max_batch = max_batch
        self.keyring = keyring or Keyring()
        self._heads: dict[str, bytes] = {}  # tenant -> the last head this replica saw ("seq:hash")
        self._queues: dict[str, list[_Append]] = {}  # tenant -> appends waiting for the tenant's writer
        self._writers: dict[str, asyncio.Task[None]] = {}
        self._append = redis.register_script(_APPEND)  # EVALSHA, loaded again if Redis lost it
        self._trim = redis.register_script(_TRIM)

    @classmethod
    def from_settings(
        cls, redis: aioredis.Redis, settings: Settings, *, serving: bool = True, more_keys: Iterable[str] = ()
    ) -> AuditLog:
        """The log as the settings describe it: the JSONL copy, the audit key (made once in development
        mode when `serving`) and the keyring, plus the key files or folders in `more_keys`."""
        jsonl = Path(settings.audit_jsonl) if settings.audit_jsonl else None
        return cls(redis, jsonl, keyring=audit_keyring(settings, serving=serving, extra=more_keys))

    async def append(
        self, tenant: str, events: Iterable[dict[str, Any]], writes: Sequence[Command] = ()
    ) -> list[dict[str, Any]]:
        """Chain `events` (each: `type` plus fields) onto the tenant's log, atomically; the sealed records.
        `writes` are the caller's own Redis commands, applied in the script call that appends the records
        (one round trip, one command, for a step's session record and its audit records): both or neither.

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
        kid, keyring = self.keyring.current, self.keyring
        while True:  # chain onto `head`; if another replica moved it, chain onto what it is now
            onto = Head.parse(head)
            seq, prev = (onto.seq, onto.hash) if onto else (0, GENESIS)
            if kid is None and onto is not None and onto.kid is not None:
                log.warning("audit_unavailable", tenant=tenant, sealed_with=onto.kid,
                            reason="no audit key (audit_key_file): it must not append unsealed records")  # fmt: skip
                raise AuditUnavailable("The audit log cannot record this, so nothing was done: its chain is sealed "
                                       "with a key this process lacks (the operator sets audit_key_file).")  # fmt: skip
            sealed = []
            for item in batch:
                records = []
                for event in item.events:
                    seq += 1
                    record = {"seq": seq, "ts": item.at, "tenant": tenant, **event, "prev": prev}
                    if kid is None:
                        record["hash"] = prev = plain_hash(record)
                    else:
                        record["chain"], record["kid"] = tenant, kid
                        record["hash"] = prev = keyring.seal(record)
                    records.append(record)
                sealed.append(records)
            new_head = (Head.sealed(keyring, tenant, seq, prev) if kid else Head(seq, prev)).encode()
            lines = [canonical(record) for records in sealed for record in records]
            done, head = await self._append(keys, [head, new_head, writes, *lines])
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

    async def verify(self, tenant: str, copy: dict[int, str] | None = None) -> Verdict:
        """Every record's seal (or, before the chain was sealed, hash) and link, the trim anchor and the
        head; with `copy` (seq -> hash of an off-box copy's sealed records), that Redis still holds them.
        A chain that verifies but was never sealed is ok but not `sealed`."""
        for attempt in range(2):
            anchor, head = await self.redis.mget(_anchor(tenant), _head(tenant))  # before the records
            verdict = await self._verify(tenant, anchor, head, copy or {})
            if verdict.ok or attempt or await self.redis.get(_anchor(tenant)) == anchor:
                return verdict  # (else a trim ran meanwhile: once more, from its anchor)
        raise AssertionError("unreachable")

    async def _verify(
        self, tenant: str, raw_anchor: bytes | None, raw_head: bytes | None, copy: dict[int, str]
    ) -> Verdict:
        try:
            anchor = Anchor.parse(raw_anchor) if raw_anchor else None
        except (ValueError, KeyError, TypeError):
            return Verdict(False, 0, "the trim anchor is unreadable", None)
        if anchor is not None and (problem := anchor.problem(self.keyring, tenant)):
            return Verdict(False, 0, problem, None)
        if anchor is not None and copy.get(anchor.seq, anchor.hash) != anchor.hash:
            return Verdict(False, 0, f"the trim anchor (seq {anchor.seq}) differs from the off-box copy", None)
        try:
            head = Head.parse(raw_head)
        except ValueError:
            return Verdict(False, 0, "the chain's head is unreadable", None)
        check = ChainCheck(tenant, self.keyring, anchor, head)
        async for entry_id, record in self.records(tenant):
            problem = check.feed(entry_id, record)
            if problem is None and copy.get(check.seq, check.prev) != check.prev:
                problem = f"record {entry_id} (seq {check.seq}) differs from the off-box copy"
            if problem is not None:
                return Verdict(False, check.count, problem, entry_id)
        problem = check.head_problem()
        if problem is None and copy and max(copy) > check.seq:
            problem = f"the off-box copy has records up to seq {max(copy)} but the chain in Redis ends at seq " \
                      f"{check.seq}: records were removed from the end"  # fmt: skip
        if problem is not None:
            return Verdict(False, check.count, problem, None)
        return Verdict(True, check.count, check.summary(anchor), None, sealed=check.sealed_from is not None)

    async def trim(self, tenant: str, out: Path, *, before: str | None = None, keep: int | None = None) -> int:
        """Export the chain's records older than stream id `before` (or all but the newest `keep`) to `out`
        (appended, synced), then remove them from Redis, leaving a sealed anchor; the number removed.
        Needs the audit key; refuses a chain that does not verify (a trim must not launder an edit)."""
        if self.keyring.current is None:
            raise AuditSealError("trimming the audit log needs the audit key (audit_key_file): it seals the anchor")
        if keep is not None:
            newest = await self.redis.xrevrange(_stream(tenant), count=keep) if keep else []
            if keep and len(newest) < keep:
                return 0
            before = newest[-1][0].decode() if newest else "+"
        raw_anchor = await self.redis.get(_anchor(tenant))
        verdict = await self.verify(tenant)
        if not verdict.ok:
            raise AuditTrimRefused(f"the chain {tenant!r} does not verify, so it is not trimmed: {verdict.message}")
        anchor = Anchor.parse(raw_anchor) if raw_anchor else None
        check, last, lines = ChainCheck(tenant, self.keyring, anchor), None, []
        async for entry_id, record in self.records(tenant):
            if before != "+" and _stream_id(entry_id) >= _stream_id(before or "0-0"):
                break
            if problem := check.feed(entry_id, record):  # changed since it verified
                raise AuditTrimRefused(f"the chain {tenant!r} changed while it was trimmed (nothing was removed; "
                                       f"{out} may hold some of its records): {problem}")  # fmt: skip
            last = (entry_id, record)
            lines.append(canonical({"stream_id": entry_id, **(record or {})}) + b"\n")
            if len(lines) >= 1000:
                await asyncio.to_thread(_append_lines, out, b"".join(lines), 0o600)
                lines = []
        if last is None:
            return 0
        await asyncio.to_thread(_append_lines, out, b"".join(lines), 0o600)  # synced before anything is removed
        entry_id, record = last
        assert record is not None
        ms, _, number = entry_id.partition("-")
        new = Anchor.make(self.keyring, tenant, record["seq"], record["hash"], entry_id, "kid" in record)
        trimmed = await self._trim([_anchor(tenant), _stream(tenant)], [raw_anchor or b"", new.encode(),
                                                                         f"{ms}-{int(number) + 1}"])  # fmt: skip
        if trimmed < 0:
            raise AuditTrimRefused(f"another trim of {tenant!r} ran meanwhile; nothing was removed (run it again)")
        event = {"type": "audit_trimmed", "trimmed_tenant": tenant, "through_seq": record["seq"],
                 "through_id": entry_id, "records": trimmed, "anchor_hash": record["hash"]}  # fmt: skip
        await self.append(SYSTEM, [event])
        return trimmed

    async def tenants(self) -> list[str]:
        found = set()
        async for key in self.redis.scan_iter(match="sentrail:audit:{*}:head", count=1000):
            found.add(key.decode()[len("sentrail:audit:{") : -len("}:head")])
        return sorted(found)


def _append_lines(path: Path, data: bytes, mode: int = 0o666) -> None:
    with open(os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, mode), "ab") as sink:
        sink.write(data)
        sink.flush()
        os.fsync(sink.fileno())


def _stream_id(entry_id: str) -> tuple[int, int]:
    ms, _, number = entry_id.partition("-")
    return int(ms), int(number or 0)


class AuditTrimRefused(Exception):
    """A trim that would lose or launder records, refused before anything was removed."""


@dataclass
class Verdict:
    ok: bool  # nothing edited, deleted, inserted or reordered that the keys can tell
    records: int
    message: str
    first_bad: str | None
    sealed: bool = False  # ok, and sealed to its end: only then is it "chain intact"


def read_copy(paths: Iterable[Path], keyring: Keyring) -> tuple[dict[str, dict[int, str]], list[str], int]:
    """An off-box copy (`audit_jsonl` files, `export`/`trim` output): each chain's sealed records as
    seq -> hash, the copy's own problems (lines not validly sealed), and how many unsealed lines it skipped."""
    chains: dict[str, dict[int, str]] = defaultdict(dict)
    problems, unsealed = [], 0
    for path in paths:
        with path.open("rb") as lines:
            for number, line in enumerate(lines, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                    record.pop("stream_id", None)
                    kid, chain, seq, digest = record.get("kid"), record.get("chain"), record["seq"], record["hash"]
                except (ValueError, KeyError, TypeError, AttributeError):
                    problems.append(f"{path}:{number}: not an audit record")
                    continue
                if kid is None:
                    unsealed += 1
                elif not keyring.holds(kid):
                    problems.append(f"{path}:{number}: sealed with key {kid}, which the keyring does not hold")
                elif not keyring.valid(kid, canonical({k: v for k, v in record.items() if k != "hash"}), digest):
                    problems.append(f"{path}:{number}: ({chain} seq {seq}) is not validly sealed")
                elif chains[chain].setdefault(seq, digest) != digest:
                    problems.append(f"{path}:{number}: ({chain} seq {seq}) differs from an earlier line: a fork")
    return dict(chains), problems, unsealed


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
