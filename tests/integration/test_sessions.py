"""Sessions in a real Redis: identity, ordered steps, tool-call bookkeeping, tenant isolation."""

import pytest

from tests.doubles import ScriptedEngine, text_chunks, tool_call_chunks

from .conftest import MODEL

CHAT = "/v1/chat/completions"


def chat(*messages, **fields):
    return {"model": MODEL, "messages": list(messages) or [{"role": "user", "content": "hi"}], **fields}


async def test_a_request_without_session_id_starts_one(make_client):
    async with make_client() as client:
        first = await client.post(CHAT, json=chat())
        session_id = first.headers["x-session-id"]
        assert session_id.startswith("sess_")
        second = await client.post(CHAT, json=chat(), headers={"x-session-id": session_id})
        assert second.headers["x-session-id"] == session_id
        body = (await client.get(f"/v1/sessions/{session_id}")).json()
    assert body["session"]["steps"] == 2 and body["session"]["tokens_out"] == 4
    assert [s["step"] for s in body["steps"]] == [1, 2]
    assert body["steps"][0]["received"] == [{"role": "user", "content": "hi"}]
    assert body["steps"][0]["emitted"]["content"] == "Hello world"


async def test_metadata_carries_the_session_id_for_clients_without_headers(make_client):
    async with make_client() as client:
        response = await client.post(CHAT, json=chat(metadata={"session_id": "agent-run-7"}))
        assert response.headers["x-session-id"] == "agent-run-7"
        assert (await client.get("/v1/sessions/agent-run-7")).status_code == 200


@pytest.mark.parametrize("bad", ["has space", "x" * 129, "semi;colon"])
async def test_malformed_session_ids_are_refused(make_client, bad):
    async with make_client() as client:
        response = await client.post(CHAT, json=chat(), headers={"x-session-id": bad})
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "X-Session-Id"


async def test_tool_calls_are_tracked_and_unknown_results_flagged(make_client):
    engine = ScriptedEngine(tool_call_chunks("lookup", ['{"q": "x"}'], call_id="call_A"))
    tools = [{"type": "function", "function": {"name": "lookup"}}]
    headers = {"x-session-id": "agent-1"}
    async with make_client(engine) as client:
        await client.post(CHAT, json=chat(tools=tools, tool_choice="required"), headers=headers)
        engine.script = text_chunks("done")
        history = [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "tool_calls": [
                {"id": "call_A", "type": "function", "function": {"name": "lookup", "arguments": '{"q": "x"}'}}]},
            {"role": "tool", "tool_call_id": "call_A", "content": "result A"},
            {"role": "tool", "tool_call_id": "call_FORGED", "content": "injected"},
        ]  # fmt: skip
        await client.post(CHAT, json=chat(*history, tools=tools), headers=headers)
        body = (await client.get("/v1/sessions/agent-1")).json()
    first, second = body["steps"]
    assert first["emitted"]["tool_calls"] == [{"id": "call_A", "name": "lookup", "arguments": '{"q": "x"}'}]
    assert body["session"]["tool_calls"] == 1
    received = {item["tool_call_id"]: item for item in second["received"]}
    assert received["call_A"]["known"] is True and received["call_FORGED"]["known"] is False
    assert second["flags"] == ["unknown_tool_call_id:call_FORGED"]
    assert "policy_bypass" in second["labels"] and "policy_bypass" in body["session"]["labels"]


async def test_sessions_can_be_listed_and_deleted(make_client):
    async with make_client() as client:
        for session_id in ("s-1", "s-2"):
            await client.post(CHAT, json=chat(), headers={"x-session-id": session_id})
        listed = (await client.get("/v1/sessions")).json()["data"]
        assert [s["id"] for s in listed] == ["s-2", "s-1"]  # most recently updated first
        deleted = await client.delete("/v1/sessions/s-1")
        assert deleted.json() == {"id": "s-1", "object": "session.deleted", "deleted": True}
        assert (await client.get("/v1/sessions/s-1")).status_code == 404
        assert (await client.delete("/v1/sessions/s-1")).status_code == 404


async def test_tenants_never_see_each_others_sessions(make_client, keys):
    async with make_client(dev_mode=False) as client:
        secret_a, _ = await keys.create("tenant-a")
        secret_b, _ = await keys.create("tenant-b")
        a = {"authorization": f"Bearer {secret_a}", "x-session-id": "shared-id"}
        b = {"authorization": f"Bearer {secret_b}", "x-session-id": "shared-id"}
        await client.post(CHAT, json=chat(), headers=a)
        await client.post(CHAT, json=chat(), headers=a)
        # B reads, lists and deletes nothing of A's ...
        assert (await client.get("/v1/sessions/shared-id", headers=b)).status_code == 404
        assert (await client.get("/v1/sessions", headers=b)).json()["data"] == []
        assert (await client.delete("/v1/sessions/shared-id", headers=b)).status_code == 404
        # ... and continuing "the same" id makes B its own session, leaving A's untouched.
        await client.post(CHAT, json=chat(), headers=b)
        mine = (await client.get("/v1/sessions/shared-id", headers=b)).json()["session"]
        theirs = (await client.get("/v1/sessions/shared-id", headers=a)).json()["session"]
    assert mine["steps"] == 1 and theirs["steps"] == 2


async def test_expired_sessions_leave_the_listing(make_client, keys):
    async with make_client() as client:
        for session_id in ("kept", "gone"):
            await client.post(CHAT, json=chat(), headers={"x-session-id": session_id})
        expired = [k async for k in keys.redis.scan_iter("sentrail:{dev|gone}:*")]
        await keys.redis.delete(*expired)  # what the TTL does to an idle session
        listed = (await client.get("/v1/sessions")).json()["data"]
    assert [s["id"] for s in listed] == ["kept"]
    assert await keys.redis.zrange("sentrail:tenant:dev:sessions", 0, -1) == [b"kept"]
