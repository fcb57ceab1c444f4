"""The audit log: every step's request, rail and tool decisions and result are chained per tenant;
`sentrail audit verify` accepts an intact chain and names the first edited, deleted or reordered
record; `audit show` prints a session's timeline; concurrent writers extend one chain."""

import asyncio
import json
from pathlib import Path

import redis.asyncio as aioredis

from gateway.cli.main import main
from gateway.stores.audit import AuditLog
from tests.doubles import ScriptedEngine, calls_chunks

from .conftest import MODEL

POLICIES = str(Path(__file__).resolve().parents[2] / "policies" / "examples" / "strict-agent")
STREAM = "sentrail:audit:{dev}:stream"


async def run_session(make_client, **settings) -> None:
    engine = ScriptedEngine(calls_chunks(("run_shell", '{"cmd": "ls"}', "call_sh"), ("web_fetch",
                            '{"url": "https://example.org"}', "call_web")))  # fmt: skip
    body = {"model": MODEL, "messages": [{"role": "user", "content": "mail bob@example.com the page"}]}
    async with make_client(engine, policies_dir=POLICIES, **settings) as client:
        response = await client.post("/v1/chat/completions", json=body, headers={"x-session-id": "audited"})
        assert response.status_code == 200


async def cli(redis_server, tmp_path, *args: str) -> int:
    config = tmp_path / "sentrail.yaml"
    config.write_text(f"redis_url: {redis_server.url}\n")
    return await asyncio.to_thread(main, ["audit", *args, "--config", str(config)])


async def test_a_step_is_chained_and_verifies(make_client, redis_server, tmp_path, capsys):
    await run_session(make_client, audit_jsonl=str(tmp_path / "audit.jsonl"))
    assert await cli(redis_server, tmp_path, "show", "audited") == 0
    timeline = capsys.readouterr().out.splitlines()
    kinds = [line.split()[3] for line in timeline]
    assert kinds == ["request", "rail", "tool_call", "tool_call", "result"], timeline
    assert "input.pii (input): modify: masked EMAIL" in timeline[1]
    assert "run_shell (call_sh): deny by rule no-shell" in timeline[2]
    assert "web_fetch (call_web): allow by rule web-read" in timeline[3]
    assert "finish tool_calls, calls ['call_web']" in timeline[4]
    assert "bob@example.com" not in " ".join(timeline)  # no content unless audit_content is on
    assert await cli(redis_server, tmp_path, "verify") == 0
    out = capsys.readouterr().out
    assert "dev: ok: 5 records, chain intact" in out and "_system: ok:" in out
    sink = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
    assert [r["type"] for r in sink if r["tenant"] == "dev"] == ["request", "rail", "tool_call", "tool_call", "result"]


async def rewrite(redis_server, change) -> str:
    """Rebuild the stream with `change(entries)` applied, keeping the stream ids (as an intruder could)."""
    client = aioredis.Redis.from_url(redis_server.url)
    entries = await client.xrange(STREAM)
    changed, target = change([(i.decode(), json.loads(f[b"r"])) for i, f in entries])
    await client.delete(STREAM)
    for entry_id, record in changed:
        await client.xadd(STREAM, {"r": json.dumps(record)}, id=entry_id)
    await client.aclose()
    return target


async def test_an_edited_record_is_named(make_client, redis_server, tmp_path, capsys):
    await run_session(make_client)

    def edit(entries):
        entries[2][1]["action"] = "allow"  # the denied shell call, made to look allowed
        return entries, entries[2][0]

    target = await rewrite(redis_server, edit)
    assert await cli(redis_server, tmp_path, "verify", "--tenant", "dev") == 1
    out = capsys.readouterr().out
    assert f"dev: BROKEN: record {target} (seq 3) was edited" in out


async def test_a_deleted_record_is_named(make_client, redis_server, tmp_path, capsys):
    await run_session(make_client)

    def delete(entries):
        return entries[:1] + entries[2:], entries[2][0]

    target = await rewrite(redis_server, delete)
    assert await cli(redis_server, tmp_path, "verify", "--tenant", "dev") == 1
    assert f"record {target} (seq 3) follows a deleted record" in capsys.readouterr().out


async def test_records_removed_from_the_end_are_noticed(make_client, redis_server, tmp_path, capsys):
    await run_session(make_client)
    await rewrite(redis_server, lambda entries: (entries[:-1], ""))
    assert await cli(redis_server, tmp_path, "verify", "--tenant", "dev") == 1
    assert "records were removed from the end" in capsys.readouterr().out


async def test_concurrent_writers_extend_one_chain(redis_server):
    clients = [aioredis.Redis.from_url(redis_server.url) for _ in range(4)]
    logs = [AuditLog(c) for c in clients]
    await asyncio.gather(*(log.append("race", [{"type": "e", "n": i}] * 3) for i, log in enumerate(logs * 5)))
    verdict = await logs[0].verify("race")
    for client in clients:
        await client.aclose()
    assert verdict.ok and verdict.records == 60, verdict


async def test_writes_sharing_the_transaction_apply_once_when_the_chain_retries(redis_server):
    """A's cached head is stale (B appended since): A's first transaction writes nothing, neither the caller's
    writes nor the records; the retry writes both, once."""
    a_client, b_client = (aioredis.Redis.from_url(redis_server.url) for _ in range(2))
    a, b = AuditLog(a_client), AuditLog(b_client)
    await a.append("shared", [{"type": "e", "by": "a"}])
    await b.append("shared", [{"type": "e", "by": "b"}])
    await a.append("shared", [{"type": "e", "by": "a"}], [["INCR", "sentrail:test:writes"]])
    verdict = await a.verify("shared")
    writes = int(await a_client.get("sentrail:test:writes"))
    for client in (a_client, b_client):
        await client.aclose()
    assert verdict.ok and verdict.records == 3, verdict
    assert writes == 1


async def test_concurrent_appends_in_one_replica_share_transactions(redis_server):
    """Group commit: appends that arrive while a transaction is in flight are chained behind it and
    written together, never racing each other for the head (each race would cost a retried round trip)."""
    client = aioredis.Redis.from_url(redis_server.url)
    log = AuditLog(client)
    before = await eval_calls(client)
    records = await asyncio.gather(*(log.append("batched", [{"type": "e", "n": i}] * 2) for i in range(50)))
    scripts = await eval_calls(client) - before
    verdict = await log.verify("batched")
    await client.aclose()
    assert verdict.ok and verdict.records == 100, verdict
    assert sorted(r["seq"] for batch in records for r in batch) == list(range(1, 101))
    assert scripts < 50, f"{scripts} script calls for 50 appends: no batching"


async def eval_calls(client: aioredis.Redis) -> int:
    stats = await client.info("commandstats")
    return sum(stats.get(f"cmdstat_{name}", {}).get("calls", 0) for name in ("eval", "evalsha"))
