"""`sentrail keys create | list | revoke` against a real Redis: the configured one, or the embedded one."""

import asyncio
import json
import secrets

from redis.asyncio import Redis

from gateway.cli.main import main
from gateway.stores.audit import SYSTEM, AuditLog
from gateway.stores.audit_seal import Keyring, read_keys


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_keys_lifecycle_on_the_configured_redis(capsys, monkeypatch, redis_server, tmp_path):
    redis_server.flush()
    monkeypatch.setenv("REDIS_URL", redis_server.url)
    monkeypatch.setenv("SENTRAIL_DATA_DIR", str(tmp_path))
    code, out, err = run(capsys, "keys", "create", "--tenant", "acme", "--models", "a,b", "--requests-per-minute", "5")
    assert code == 0 and "cannot be shown again" in err
    fields = dict(line.split(":  ", 1) for line in out.strip().splitlines())
    assert fields["tenant"] == "acme" and fields["secret"].startswith("sk-sentrail-")
    code, out, _ = run(capsys, "keys", "list")
    listed = [json.loads(line) for line in out.splitlines()]
    assert [(k["key_id"], k["models"], k["limits"]) for k in listed] == [
        (fields["key id"], ["a", "b"], {"requests_per_minute": 5})
    ]
    assert fields["secret"] not in out
    assert run(capsys, "keys", "revoke", fields["key id"])[0] == 0
    assert run(capsys, "keys", "revoke", fields["key id"])[0] == 1
    assert run(capsys, "keys", "list")[1] == ""


def test_keys_without_redis_url_use_the_embedded_redis(capsys, monkeypatch, tmp_path):
    monkeypatch.delenv("REDIS_URL", raising=False)
    monkeypatch.setenv("SENTRAIL_DATA_DIR", str(tmp_path))
    assert run(capsys, "keys", "create", "--tenant", "acme")[0] == 0
    code, out, _ = run(capsys, "keys", "list")  # a second embedded start reads the same AOF
    assert code == 0 and json.loads(out)["tenant"] == "acme"
    assert (tmp_path / "redis" / "appendonly.aof").exists() or (tmp_path / "redis" / "appendonlydir").exists()


def test_invalid_tenant_name_is_refused(capsys, monkeypatch, redis_server):
    monkeypatch.setenv("REDIS_URL", redis_server.url)
    code, _, err = run(capsys, "keys", "create", "--tenant", "bad tenant!")
    assert code == 2 and "invalid key" in err


def test_a_key_the_audit_log_cannot_record_is_not_created(capsys, monkeypatch, redis_server, tmp_path):
    """The key's writes travel in the script call that appends its `key_created` record: when the record
    cannot be written (the system chain is sealed with a key this process lacks), no key exists and the
    command says why, without a traceback."""
    redis_server.flush()
    monkeypatch.setenv("REDIS_URL", redis_server.url)
    monkeypatch.setenv("SENTRAIL_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("SENTRAIL_HOME", str(tmp_path))  # no development audit key: this process has none
    other = tmp_path / "other.key"
    other.write_text(secrets.token_hex(32) + "\n")

    async def seal() -> None:
        client = Redis.from_url(redis_server.url)
        await AuditLog(client, keyring=Keyring.from_secrets(read_keys(other))).append(SYSTEM, [{"type": "e"}])
        await client.aclose()

    asyncio.run(seal())
    code, out, err = run(capsys, "keys", "create", "--tenant", "acme")
    assert code == 1 and "audit_key_file" in err and "Traceback" not in err and "secret" not in out
    assert run(capsys, "keys", "list")[1] == ""
