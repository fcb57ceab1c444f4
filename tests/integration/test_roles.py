"""Roles on every route (real app, scripted engine, real Redis, keys from the key store): agent routes
(chat, responses, sessions, tool checks) need `agent`; approvals need `approver` (reading: or `auditor`);
the review data needs `auditor`; `admin` holds every role; models are listed for any key. A key without
the role gets 403 `permission_denied` in the OpenAI error shape; one with it gets past the check (2xx,
or the 4xx its request earns). Deleting a session or a stored response is an audit record."""

import secrets

import pytest
from redis.asyncio import Redis

from gateway.stores.audit import AuditLog
from gateway.stores.audit_seal import Keyring, read_keys

from .conftest import MODEL

ROLES = ("agent", "approver", "auditor", "admin")
AGENT = {"agent", "admin"}
EVERYONE = set(ROLES)
CHECK = {"calls": [{"name": "lookup", "arguments": {"q": "x"}}], "trace": []}
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}

# (method, path, JSON body, the roles allowed, the status an allowed role gets for this request)
MATRIX = [
    ("POST", "/v1/chat/completions", CHAT, AGENT, 200),
    ("POST", "/v1/responses", {"model": MODEL, "input": "hi"}, AGENT, 200),
    ("GET", "/v1/responses/resp_nope", None, AGENT, 404),
    ("DELETE", "/v1/responses/resp_nope", None, AGENT, 404),
    ("GET", "/v1/sessions", None, AGENT, 200),
    ("GET", "/v1/sessions/sess_nope", None, AGENT, 404),
    ("DELETE", "/v1/sessions/sess_nope", None, AGENT, 404),
    ("POST", "/v1/tool-calls/check", CHECK, AGENT, 200),
    ("GET", "/v1/models", None, EVERYONE, 200),
    ("GET", f"/v1/models/{MODEL}", None, EVERYONE, 200),
    ("GET", "/v1/approvals", None, {"approver", "auditor", "admin"}, 200),
    ("GET", "/v1/approvals/apr_nope", None, {"approver", "auditor", "admin"}, 404),
    ("POST", "/v1/approvals/apr_nope", {"decision": "approve"}, {"approver", "admin"}, 404),
    ("GET", "/v1/audit/sessions", None, {"auditor", "admin"}, 200),
    ("GET", "/v1/audit/sessions/sess_nope", None, {"auditor", "admin"}, 404),
]


def bearer(secret: str) -> dict[str, str]:
    return {"authorization": f"Bearer {secret}"}


def assert_denied(response) -> None:
    assert response.status_code == 403, response.text
    error = response.json()["error"]
    assert error["code"] == "permission_denied" and error["type"] == "permission_error", error
    assert "role" in error["message"] and set(error) >= {"message", "type", "param", "code"}


async def send(client, method: str, path: str, body, secret: str):
    return await client.request(method, path, json=body, headers=bearer(secret))


@pytest.mark.parametrize(
    ("method", "path", "body", "allowed", "status"), MATRIX, ids=[f"{m} {p}" for m, p, *_ in MATRIX]
)
async def test_each_role_on_each_route(make_client, keys, method, path, body, allowed, status):
    secrets = {role: (await keys.create("acme", roles=(role,)))[0] for role in ROLES}
    async with make_client(dev_mode=False) as client:
        got = {role: await send(client, method, path, body, secret) for role, secret in secrets.items()}
    outcome = {role: "denied" if r.status_code == 403 else r.status_code for role, r in got.items()}
    expected = {role: status if role in allowed else "denied" for role in ROLES}
    assert outcome == expected, {role: r.text[:200] for role, r in got.items()}
    for role in set(ROLES) - allowed:
        assert_denied(got[role])


async def test_development_mode_holds_every_role(make_client):
    async with make_client() as client:  # no keys: the loopback development key
        for method, path, body, _, status in MATRIX:
            response = await client.request(method, path, json=body)
            assert response.status_code == status, (method, path, response.text)


async def test_a_key_with_several_roles_gets_the_routes_of_each(make_client, keys):
    secret, _ = await keys.create("acme", roles=("approver", "auditor"))
    async with make_client(dev_mode=False) as client:
        assert (await send(client, "GET", "/v1/approvals", None, secret)).status_code == 200
        assert (await send(client, "GET", "/v1/audit/sessions", None, secret)).status_code == 200
        assert_denied(await send(client, "POST", "/v1/chat/completions", CHAT, secret))


async def chain(redis: Redis, tenant: str) -> list[dict]:
    log = AuditLog(redis)
    verdict = await log.verify(tenant)
    assert verdict.ok, verdict.message
    return [record async for _, record in log.records(tenant)]


async def test_an_auditor_deletes_nothing_and_an_agents_deletions_are_audited(make_client, keys):
    agent, agent_record = await keys.create("acme")
    auditor, _ = await keys.create("acme", roles=("auditor",))
    async with make_client(dev_mode=False) as client:
        created = await client.post("/v1/responses", json={"model": MODEL, "input": "hi"}, headers=bearer(agent))
        response_id, session_id = created.json()["id"], created.headers["x-session-id"]
        before = len(await chain(keys.redis, "acme"))

        assert_denied(await client.delete(f"/v1/sessions/{session_id}", headers=bearer(auditor)))
        assert_denied(await client.delete(f"/v1/responses/{response_id}", headers=bearer(auditor)))
        assert (await client.get(f"/v1/sessions/{session_id}", headers=bearer(agent))).status_code == 200
        assert (await client.get(f"/v1/responses/{response_id}", headers=bearer(agent))).status_code == 200
        assert len(await chain(keys.redis, "acme")) == before  # a refused deletion deleted and recorded nothing

        started = created.json()["created_at"]
        gone = await client.delete(f"/v1/responses/{response_id}", headers=bearer(agent))
        assert gone.status_code == 200 and gone.json()["deleted"] is True
        gone = await client.delete(f"/v1/sessions/{session_id}", headers=bearer(agent))
        assert gone.status_code == 200 and gone.json()["deleted"] is True
        assert (await client.get(f"/v1/sessions/{session_id}", headers=bearer(agent))).status_code == 404
        assert (await client.delete(f"/v1/sessions/{session_id}", headers=bearer(agent))).status_code == 404

    records = await chain(keys.redis, "acme")  # appended on the tenant's chain, which still verifies
    deleted = records[before:]
    assert [r["type"] for r in deleted] == ["response_deleted", "session_deleted"]  # the 404 recorded nothing
    assert deleted[0]["response_id"] == response_id and deleted[1]["session_id"] == session_id
    for record in deleted:
        assert record["key_id"] == agent_record.key_id and record["tenant"] == "acme"
        assert record["ts"] >= started and record["request_id"]


async def test_a_deletion_that_cannot_be_recorded_deletes_nothing(make_client, keys, tmp_path):
    """The deletion travels in the script call that appends its record: when the record cannot be written (here,
    a chain sealed with a key this gateway lacks), the session and the response are still there."""
    agent, _ = await keys.create("acme")
    async with make_client(dev_mode=False) as client:
        created = await client.post("/v1/responses", json={"model": MODEL, "input": "hi"}, headers=bearer(agent))
        response_id, session_id = created.json()["id"], created.headers["x-session-id"]
        secret = tmp_path / "other.key"
        secret.write_text(secrets.token_hex(32) + "\n")
        await AuditLog(keys.redis, keyring=Keyring.from_secrets(read_keys(secret))).append("acme", [{"type": "e"}])

        for what in (f"sessions/{session_id}", f"responses/{response_id}"):
            refused = await client.delete(f"/v1/{what}", headers=bearer(agent))
            assert refused.status_code == 503 and refused.json()["error"]["code"] == "audit_unavailable"
            assert "audit_key_file" in refused.json()["error"]["message"]
        assert (await client.get(f"/v1/sessions/{session_id}", headers=bearer(agent))).status_code == 200
        assert (await client.get(f"/v1/responses/{response_id}", headers=bearer(agent))).status_code == 200
