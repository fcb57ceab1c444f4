"""The audit log only its key holder can extend: an intruder with full Redis access but without the key
cannot edit a record (recomputing every later hash and the head), cut the tail (resetting the head),
strip the seals, trim, or forge a trim anchor without `sentrail audit verify` exiting 1 with the first
bad record; keys rotate (a keyring verifies both); a trim leaves a sealed anchor that verification starts
from; the off-box JSONL copy catches what Redis alone cannot (a replayed head, a deleted chain)."""

import asyncio
import hashlib
import json
import secrets
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from gateway.cli.main import main
from gateway.errors import AuditUnavailable
from gateway.settings import load_settings
from gateway.stores.audit import AuditLog
from gateway.stores.audit_seal import AuditKeyError, Keyring, audit_keyring, key_id, read_keys
from tests.doubles import ScriptedEngine, calls_chunks

from .conftest import MODEL

POLICIES = str(Path(__file__).resolve().parents[2] / "policies" / "examples" / "strict-agent")


def new_key(path: Path) -> Path:
    path.write_text(secrets.token_hex(32) + "\n")
    path.chmod(0o600)
    return path


async def run_session(make_client, tmp_path, **settings) -> None:
    engine = ScriptedEngine(calls_chunks(("run_shell", '{"cmd": "ls"}', "call_sh"), ("web_fetch",
                            '{"url": "https://example.org"}', "call_web")))  # fmt: skip
    body = {"model": MODEL, "messages": [{"role": "user", "content": "mail bob@example.com the page"}]}
    settings = {"home": str(tmp_path), "policies_dir": POLICIES, **settings}
    async with make_client(engine, **settings) as client:
        response = await client.post("/v1/chat/completions", json=body, headers={"x-session-id": "audited"})
        assert response.status_code == 200, response.text


async def cli(redis_server, tmp_path, *args: str, **settings) -> int:
    """`sentrail audit ...` with its own home (no development key but the one a test's gateway made there)."""
    config = tmp_path / "sentrail.json"
    config.write_text(json.dumps({"redis_url": redis_server.url, "home": str(tmp_path), **settings}))
    return await asyncio.to_thread(main, ["audit", *args, "--config", str(config)])


def plain(record: dict) -> str:
    """The hash anyone can compute (SHA-256 of the canonical record without `hash`)."""
    body = json.dumps({k: v for k, v in record.items() if k != "hash"}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(body.encode()).hexdigest()


async def intrude(redis_server, tenant: str, change, head: str | None = None) -> list[str]:
    """An intruder with full Redis access and no key: rebuild the stream from `change(records)` (keeping
    the stream ids), then set the head to `head`, or to what the records now end with; the ids."""
    client = aioredis.Redis.from_url(redis_server.url)
    stream = f"sentrail:audit:{{{tenant}}}:stream"
    entries = [(i.decode(), json.loads(f[b"r"])) for i, f in await client.xrange(stream)]
    changed = change(entries)
    await client.delete(stream)
    for entry_id, record in changed:
        await client.xadd(stream, {"r": json.dumps(record)}, id=entry_id)
    last = changed[-1][1]
    await client.set(f"sentrail:audit:{{{tenant}}}:head", head or f"{last['seq']}:{last['hash']}")
    await client.aclose()
    return [entry_id for entry_id, _ in entries]


def rechain(entries, start: int, strip_seals: bool = False):
    """Recompute every hash from `start` on, as today's unkeyed chain would (optionally dropping seals)."""
    for index, (_, record) in enumerate(entries):
        if index < start:
            continue
        if strip_seals:
            record.pop("kid", None)
            record.pop("chain", None)
        record["prev"] = entries[index - 1][1]["hash"] if index else "0" * 64
        record["hash"] = plain(record)
    return entries


async def test_a_sealed_chain_verifies(make_client, redis_server, tmp_path, capsys):
    key = new_key(tmp_path / "seal.key")
    await run_session(make_client, tmp_path, audit_key_file=str(key), audit_jsonl=str(tmp_path / "audit.jsonl"))
    kid = key_id(key.read_text().strip().encode())
    assert await cli(redis_server, tmp_path, "verify", audit_key_file=str(key)) == 0
    out = capsys.readouterr().out
    assert f"dev: ok: 5 records, chain intact and sealed (key {kid})" in out and "_system: ok:" in out
    sink = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
    assert {(r["kid"], r["chain"]) for r in sink if r["tenant"] == "dev"} == {(kid, "dev")}
    against = ("--against", str(tmp_path / "audit.jsonl"))
    assert await cli(redis_server, tmp_path, "verify", *against, audit_key_file=str(key)) == 0
    # without the key nothing can be reported intact
    assert await cli(redis_server, tmp_path, "verify", "--tenant", "dev") == 1
    assert f"sealed with key {kid}, which the keyring does not hold" in capsys.readouterr().out


@pytest.mark.parametrize("strip_seals", [False, True], ids=["rehashed", "seals-stripped"])
async def test_an_edit_with_every_later_hash_and_the_head_recomputed_is_named(
    make_client, redis_server, tmp_path, capsys, strip_seals
):
    await run_session(make_client, tmp_path)  # development mode: a key made once under the home folder

    def edit(entries):
        assert entries[2][1]["tool"] == "run_shell" and entries[2][1]["action"] == "deny"
        entries[2][1]["action"] = "allow"  # the denied shell call, made to look allowed
        return rechain(entries, 2, strip_seals)

    ids = await intrude(redis_server, "dev", edit)
    assert await cli(redis_server, tmp_path, "verify", "--tenant", "dev") == 1
    out = capsys.readouterr().out
    what = "is not sealed but follows sealed records" if strip_seals else "was edited"
    assert f"dev: BROKEN: record {ids[2]} (seq 3) {what}" in out, out


async def test_a_whole_chain_rewritten_unsealed_is_never_intact(make_client, redis_server, tmp_path, capsys):
    await run_session(make_client, tmp_path, audit_jsonl=str(tmp_path / "audit.jsonl"))
    await intrude(redis_server, "dev", lambda entries: rechain(entries, 0, strip_seals=True))
    assert await cli(redis_server, tmp_path, "verify", "--tenant", "dev") == 3  # unsealed: not proof of anything
    out = capsys.readouterr().out
    assert "dev: UNSEALED: 5 records, consistent but UNSEALED" in out and "intact" not in out
    against = ("--against", str(tmp_path / "audit.jsonl"))
    assert await cli(redis_server, tmp_path, "verify", "--tenant", "dev", *against) == 1
    assert "(seq 1) differs from the off-box copy" in capsys.readouterr().out


async def test_a_cut_tail_with_the_head_reset_is_noticed(make_client, redis_server, tmp_path, capsys):
    await run_session(make_client, tmp_path)
    client = aioredis.Redis.from_url(redis_server.url)
    sealed_head = (await client.get("sentrail:audit:{dev}:head")).decode()
    await client.aclose()

    await intrude(redis_server, "dev", lambda entries: entries[:3])  # head reset to "3:<hash of seq 3>"
    assert await cli(redis_server, tmp_path, "verify", "--tenant", "dev") == 1
    assert "the head is not sealed although the chain is" in capsys.readouterr().out

    records = await records_of(redis_server, "dev")  # the head's kid and tag, moved onto the earlier position
    _, _, kid, tag = sealed_head.split(":")
    await intrude(redis_server, "dev", lambda entries: entries, head=f"3:{records[-1]['hash']}:{kid}:{tag}")
    assert await cli(redis_server, tmp_path, "verify", "--tenant", "dev") == 1
    assert "the head (seq 3) is forged" in capsys.readouterr().out


async def records_of(redis_server, tenant: str) -> list[dict]:
    client = aioredis.Redis.from_url(redis_server.url)
    entries = await client.xrange(f"sentrail:audit:{{{tenant}}}:stream")
    await client.aclose()
    return [json.loads(fields[b"r"]) for _, fields in entries]


async def test_a_replayed_head_passes_in_redis_alone_but_not_against_the_off_box_copy(
    make_client, redis_server, tmp_path, capsys
):
    """The limit of a seal kept in Redis: an intruder who saw the head at seq 5 (MONITOR, an AOF, a
    backup) can cut back to seq 5 later and restore that head. The off-box copy still has the rest."""
    jsonl = tmp_path / "audit.jsonl"
    await run_session(make_client, tmp_path, audit_jsonl=str(jsonl))
    client = aioredis.Redis.from_url(redis_server.url)
    observed = (await client.get("sentrail:audit:{dev}:head")).decode()
    await client.aclose()
    await run_session(make_client, tmp_path, audit_jsonl=str(jsonl))  # seq 6-9 (the session's second step)
    await intrude(redis_server, "dev", lambda entries: entries[:5], head=observed)
    assert await cli(redis_server, tmp_path, "verify", "--tenant", "dev") == 0
    capsys.readouterr()
    assert await cli(redis_server, tmp_path, "verify", "--tenant", "dev", "--against", str(jsonl)) == 1
    assert "the off-box copy has records up to seq 9 but the chain in Redis ends at seq 5" in capsys.readouterr().out


async def test_a_chain_deleted_from_redis_is_named_by_the_off_box_copy(make_client, redis_server, tmp_path, capsys):
    jsonl = tmp_path / "audit.jsonl"
    await run_session(make_client, tmp_path, audit_jsonl=str(jsonl))
    client = aioredis.Redis.from_url(redis_server.url)
    await client.delete("sentrail:audit:{dev}:stream", "sentrail:audit:{dev}:head")
    await client.aclose()
    assert await cli(redis_server, tmp_path, "verify") == 0  # Redis alone no longer knows the chain
    capsys.readouterr()
    assert await cli(redis_server, tmp_path, "verify", "--against", str(jsonl)) == 1
    assert "dev: BROKEN: the off-box copy has records up to seq 5" in capsys.readouterr().out


async def test_keys_rotate_and_a_keyring_verifies_both(redis_server, tmp_path, capsys):
    redis_server.flush()
    old, new = new_key(tmp_path / "old.key"), new_key(tmp_path / "new.key")
    ring = tmp_path / "ring"
    ring.mkdir()
    (ring / "old.key").write_text(old.read_text())
    (ring / "old.key").chmod(0o600)
    client = aioredis.Redis.from_url(redis_server.url)
    await AuditLog(client, keyring=Keyring.from_secrets(read_keys(old))).append("acme", [{"type": "e", "n": 1}] * 3)
    await AuditLog(client, keyring=Keyring.from_secrets(read_keys(new))).append("acme", [{"type": "e", "n": 2}] * 2)
    kids = [r["kid"] for r in await records_of(redis_server, "acme")]
    await client.aclose()
    a, b = key_id(read_keys(old)[0]), key_id(read_keys(new)[0])
    assert kids == [a, a, a, b, b]
    assert await cli(redis_server, tmp_path, "verify", audit_key_file=str(new), audit_keyring=str(ring)) == 0
    assert f"acme: ok: 5 records, chain intact and sealed (key {', '.join(sorted([a, b]))})" in capsys.readouterr().out
    assert await cli(redis_server, tmp_path, "verify", "--keyring", str(old), audit_key_file=str(new)) == 0
    capsys.readouterr()
    assert await cli(redis_server, tmp_path, "verify", audit_key_file=str(new)) == 1
    assert f"(seq 1) is sealed with key {a}, which the keyring does not hold" in capsys.readouterr().out


async def test_records_from_before_the_key_are_an_unsealed_prefix(redis_server, tmp_path, capsys):
    redis_server.flush()
    key = new_key(tmp_path / "seal.key")
    client = aioredis.Redis.from_url(redis_server.url)
    await AuditLog(client).append("acme", [{"type": "e"}] * 3)
    assert await cli(redis_server, tmp_path, "verify", "--tenant", "acme") == 3
    assert "acme: UNSEALED: 3 records, consistent but UNSEALED" in capsys.readouterr().out
    sealed = AuditLog(client, keyring=Keyring.from_secrets(read_keys(key)))
    await sealed.append("acme", [{"type": "e"}] * 2)
    with pytest.raises(AuditUnavailable, match="sealed"):  # a process without the key must not extend it
        await AuditLog(client).append("acme", [{"type": "e"}])
    await client.aclose()
    assert await cli(redis_server, tmp_path, "verify", "--tenant", "acme", audit_key_file=str(key)) == 0
    out = capsys.readouterr().out
    assert "acme: ok: 5 records, chain intact and sealed" in out
    assert "seq 1-3 were written before the key was set: unsealed" in out


async def test_sealed_concurrent_writers_extend_one_chain(redis_server, tmp_path):
    redis_server.flush()
    ring = Keyring.from_secrets(read_keys(new_key(tmp_path / "seal.key")))
    clients = [aioredis.Redis.from_url(redis_server.url) for _ in range(4)]
    logs = [AuditLog(c, keyring=ring) for c in clients]
    await asyncio.gather(*(log.append("race", [{"type": "e", "n": i}] * 3) for i, log in enumerate(logs * 5)))
    verdict = await logs[0].verify("race")
    for client in clients:
        await client.aclose()
    assert verdict.ok and verdict.sealed and verdict.records == 60, verdict


async def fill(redis_server, key: Path, tenant: str, count: int) -> None:
    client = aioredis.Redis.from_url(redis_server.url)
    log = AuditLog(client, keyring=Keyring.from_secrets(read_keys(key)))
    for n in range(count):
        await log.append(tenant, [{"type": "e", "n": n}])
    await client.aclose()


async def test_a_trim_exports_then_leaves_a_sealed_anchor_that_verifies(redis_server, tmp_path, capsys):
    redis_server.flush()
    key, out = new_key(tmp_path / "seal.key"), tmp_path / "trimmed.jsonl"
    await fill(redis_server, key, "acme", 10)
    assert await cli(redis_server, tmp_path, "trim", "--tenant", "acme", "--keep", "4", "--out", str(out),
                     audit_key_file=str(key)) == 0  # fmt: skip
    assert "acme: trimmed 6 records" in capsys.readouterr().out
    exported = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["seq"] for r in exported] == [1, 2, 3, 4, 5, 6] and out.stat().st_mode & 0o777 == 0o600
    assert [r["seq"] for r in await records_of(redis_server, "acme")] == [7, 8, 9, 10]
    await fill(redis_server, key, "acme", 2)  # the chain goes on from the anchor
    assert await cli(redis_server, tmp_path, "verify", "--against", str(out), audit_key_file=str(key)) == 0
    verified = capsys.readouterr().out
    assert "acme: ok: 6 records, chain intact and sealed" in verified and "seq 1-6 trimmed" in verified
    assert "_system: ok: 1 records" in verified  # the trim itself is on record

    before = (await redis_ids(redis_server, "acme"))[2]  # trim by stream id: records older than the third
    assert await cli(redis_server, tmp_path, "trim", "--tenant", "acme", "--before", before, "--out", str(out),
                     audit_key_file=str(key)) == 0  # fmt: skip
    assert [r["seq"] for r in await records_of(redis_server, "acme")] == [9, 10, 11, 12]
    assert await cli(redis_server, tmp_path, "verify", "--tenant", "acme", audit_key_file=str(key)) == 0


async def redis_ids(redis_server, tenant: str) -> list[str]:
    client = aioredis.Redis.from_url(redis_server.url)
    entries = await client.xrange(f"sentrail:audit:{{{tenant}}}:stream")
    await client.aclose()
    return [entry_id.decode() for entry_id, _ in entries]


async def test_trimming_needs_the_key_and_a_chain_that_verifies(redis_server, tmp_path, capsys):
    redis_server.flush()
    key, out = new_key(tmp_path / "seal.key"), tmp_path / "trimmed.jsonl"
    await fill(redis_server, key, "acme", 5)
    assert await cli(redis_server, tmp_path, "trim", "--tenant", "acme", "--keep", "1", "--out", str(out)) == 1
    assert "needs the audit key" in capsys.readouterr().err
    await intrude(redis_server, "acme", lambda entries: rechain(entries, 1))  # seq 2 onwards rehashed
    assert await cli(redis_server, tmp_path, "trim", "--tenant", "acme", "--keep", "1", "--out", str(out),
                     audit_key_file=str(key)) == 1  # fmt: skip
    assert "does not verify, so it is not trimmed" in capsys.readouterr().err
    assert not out.exists() and len(await records_of(redis_server, "acme")) == 5


async def test_a_trim_without_the_key_or_a_forged_anchor_is_detected(redis_server, tmp_path, capsys):
    redis_server.flush()
    key, out = new_key(tmp_path / "seal.key"), tmp_path / "trimmed.jsonl"
    await fill(redis_server, key, "acme", 8)
    assert await cli(redis_server, tmp_path, "trim", "--tenant", "acme", "--keep", "5", "--out", str(out),
                     audit_key_file=str(key)) == 0  # fmt: skip
    client = aioredis.Redis.from_url(redis_server.url)
    anchor = json.loads(await client.get("sentrail:audit:{acme}:anchor"))
    ids = await redis_ids(redis_server, "acme")

    # trimmed past the anchor, without the key
    await client.xtrim("sentrail:audit:{acme}:stream", minid=ids[2], approximate=False)
    assert await cli(redis_server, tmp_path, "verify", "--tenant", "acme", audit_key_file=str(key)) == 1
    assert f"acme: BROKEN: record {ids[2]} (seq 6) follows a deleted record" in capsys.readouterr().out

    records = await records_of(redis_server, "acme")  # ... and an anchor forged to match, copying the seal
    forged = {**anchor, "seq": 5, "hash": records[0]["prev"], "id": ids[1]}
    await client.set("sentrail:audit:{acme}:anchor", json.dumps(forged))
    assert await cli(redis_server, tmp_path, "verify", "--tenant", "acme", audit_key_file=str(key)) == 1
    assert "the trim anchor (seq 5) is forged" in capsys.readouterr().out

    await client.delete("sentrail:audit:{acme}:anchor")  # or no anchor at all
    await client.aclose()
    assert await cli(redis_server, tmp_path, "verify", "--tenant", "acme", audit_key_file=str(key)) == 1
    assert f"record {ids[2]} (seq 6) follows a deleted record (expected seq 1)" in capsys.readouterr().out


async def test_development_mode_makes_one_private_key_outside_redis(make_client, redis_server, tmp_path):
    settings = load_settings(environ={}, dev_mode=True, home=str(tmp_path))
    first = audit_keyring(settings, serving=True)
    path = tmp_path / "audit.key"
    assert path.stat().st_mode & 0o777 == 0o600
    assert audit_keyring(settings, serving=True).current == first.current  # made once
    assert audit_keyring(settings, serving=False).current == first.current  # the CLI finds it
    assert audit_keyring(load_settings(environ={}, home=str(tmp_path)), serving=True).current is None  # not outside dev
    await run_session(make_client, tmp_path)
    secret = read_keys(path)[0]
    aof = b"".join(p.read_bytes() for p in redis_server.directory.rglob("*.aof"))
    assert aof and secret not in aof  # nothing Redis was ever sent holds the key


def test_key_files_are_checked(tmp_path):
    short = tmp_path / "short.key"
    short.write_text("too short\n")
    with pytest.raises(AuditKeyError, match="at least 32 characters"):
        read_keys(short)
    ring = tmp_path / "ring"
    ring.mkdir()
    new_key(ring / "a.key")
    new_key(ring / "b.key")
    (ring / "notes").write_text("# comments and blank lines are skipped\n\n")
    assert len(Keyring(read_keys(ring)).kids) == 2
    settings = load_settings(environ={"SENTRAIL_AUDIT_KEY_FILE": str(ring)})
    with pytest.raises(AuditKeyError, match="exactly one key"):
        audit_keyring(settings, serving=True)
