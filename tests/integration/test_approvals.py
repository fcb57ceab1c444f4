"""Approval tickets end to end on the request path (shipped policies, scripted engine, real Redis): a call
that needs approval is withheld with a ticket; once approved, the session's next step receives exactly
that call without the model, once; rejected or stale tickets deliver nothing; only approvers decide."""

import shutil
from pathlib import Path

from tests.doubles import ScriptedEngine, calls_chunks, text_chunks

from .conftest import MODEL

CHAT = "/v1/chat/completions"
POLICIES = str(Path(__file__).resolve().parents[2] / "policies" / "examples" / "strict-agent")
TOOLS = [{"type": "function", "function": {"name": "send_payment", "parameters": {"type": "object"}}}]
PAYMENT = '{"amount": 500, "to": "ACME Ltd"}'


def ask(text: str = "pay the invoice") -> dict:
    return {"model": MODEL, "messages": [{"role": "user", "content": text}], "tools": TOOLS}


async def withheld(client, engine, session: str) -> str:
    engine.script = calls_chunks(("send_payment", PAYMENT, "call_pay"))
    response = await client.post(CHAT, json=ask(), headers={"x-session-id": session})
    body = response.json()
    assert body["choices"][0]["finish_reason"] == "content_filter"
    assert body["choices"][0]["message"].get("tool_calls") is None
    (decision,) = body["sentrail"]["tool_calls"]
    assert decision["action"] == "require_approval" and decision["ticket"].startswith("apr_")
    assert f"awaits approval (ticket {decision['ticket']})" in body["choices"][0]["message"]["content"]
    return decision["ticket"]


async def test_an_approved_call_is_delivered_exactly_once_without_the_model(make_client):
    engine = ScriptedEngine()
    async with make_client(engine, policies_dir=POLICIES) as client:
        ticket = await withheld(client, engine, "pay-1")
        pending = (await client.get("/v1/approvals", params={"status": "pending"})).json()["data"]
        assert [(t["id"], t["tool"], t["arguments"]) for t in pending] == [(ticket, "send_payment", PAYMENT)]
        decided = await client.post(f"/v1/approvals/{ticket}", json={"decision": "approve", "note": "invoice 77"})
        assert decided.status_code == 200 and decided.json()["status"] == "approved", decided.text
        again = await client.post(f"/v1/approvals/{ticket}", json={"decision": "reject"})
        assert again.status_code == 409 and again.json()["error"]["type"] == "invalid_request_error"

        asked = len(engine.requests)
        engine.script = text_chunks("I should not be asked")
        delivered = (await client.post(CHAT, json=ask("go on"), headers={"x-session-id": "pay-1"})).json()
        assert len(engine.requests) == asked  # the model was not asked again
        (call,) = delivered["choices"][0]["message"]["tool_calls"]
        assert (call["id"], call["function"]["name"], call["function"]["arguments"]) == ("call_pay", "send_payment",
                                                                                         PAYMENT)  # fmt: skip
        assert delivered["choices"][0]["finish_reason"] == "tool_calls"
        assert delivered["sentrail"]["tool_calls"][0]["ticket"] == ticket

        after = (await client.post(CHAT, json=ask("and now?"), headers={"x-session-id": "pay-1"})).json()
        assert after["choices"][0]["message"]["content"] == "I should not be asked"  # once only
        assert (await client.get(f"/v1/approvals/{ticket}")).json()["status"] == "delivered"
        session = (await client.get("/v1/sessions/pay-1")).json()
    actions = [[d["action"] for d in step["tool_calls"]] for step in session["steps"]]
    assert actions == [["require_approval"], ["allow"], []]


async def test_a_streamed_delivery_carries_the_call(make_client):
    engine = ScriptedEngine()
    async with make_client(engine, policies_dir=POLICIES) as client:
        ticket = await withheld(client, engine, "pay-2")
        await client.post(f"/v1/approvals/{ticket}", json={"decision": "approve"})
        response = await client.post(CHAT, json={**ask("go"), "stream": True}, headers={"x-session-id": "pay-2"})
    assert '"id":"call_pay"' in response.text and '"finish_reason":"tool_calls"' in response.text
    assert response.text.rstrip().endswith("data: [DONE]")


async def test_a_rejected_ticket_delivers_nothing(make_client):
    engine = ScriptedEngine()
    async with make_client(engine, policies_dir=POLICIES) as client:
        ticket = await withheld(client, engine, "pay-3")
        rejected = await client.post(f"/v1/approvals/{ticket}", json={"decision": "reject", "note": "no"})
        assert rejected.json()["status"] == "rejected"
        engine.script = text_chunks("ok, not paying")
        after = (await client.post(CHAT, json=ask("well?"), headers={"x-session-id": "pay-3"})).json()
    assert after["choices"][0]["message"]["content"] == "ok, not paying"


async def test_bad_decisions_and_unknown_tickets(make_client):
    async with make_client(policies_dir=POLICIES) as client:
        assert (await client.post("/v1/approvals/apr_nope", json={"decision": "approve"})).status_code == 404
        bad = await client.post("/v1/approvals/apr_nope", json={"decision": "maybe"})
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "decision"
        assert (await client.get("/v1/approvals", params={"status": "lost"})).status_code == 400


async def test_only_approvers_of_the_same_tenant_decide(make_client, keys):
    agent, _ = await keys.create("acme")
    approver, approver_record = await keys.create("acme", roles=("approver",))
    stranger, _ = await keys.create("globex", roles=("approver",))
    engine = ScriptedEngine(calls_chunks(("send_payment", PAYMENT, "call_pay")))
    async with make_client(engine, dev_mode=False, policies_dir=POLICIES) as client:
        response = await client.post(CHAT, json=ask(), headers={"authorization": f"Bearer {agent}"})
        ticket = response.json()["sentrail"]["tool_calls"][0]["ticket"]
        body = {"decision": "approve"}
        as_agent = await client.post(f"/v1/approvals/{ticket}", json=body, headers={"authorization": f"Bearer {agent}"})
        assert as_agent.status_code == 403
        other = await client.post(f"/v1/approvals/{ticket}", json=body, headers={"authorization": f"Bearer {stranger}"})
        assert other.status_code == 404
        ok = await client.post(f"/v1/approvals/{ticket}", json=body, headers={"authorization": f"Bearer {approver}"})
        assert ok.status_code == 200 and ok.json()["decided_by"] == approver_record.key_id


async def test_a_ticket_of_an_older_policy_version_is_not_delivered(make_client, tmp_path):
    engine = ScriptedEngine()
    async with make_client(engine, policies_dir=POLICIES) as client:
        ticket = await withheld(client, engine, "pay-4")
        await client.post(f"/v1/approvals/{ticket}", json={"decision": "approve"})
    shutil.copytree(POLICIES, tmp_path / "policies")
    with (tmp_path / "policies" / "tools.yaml").open("a") as edited:
        edited.write("# edited: a new policy version\n")
    engine.script = text_chunks("fresh answer")
    async with make_client(engine, policies_dir=str(tmp_path / "policies")) as client:
        after = (await client.post(CHAT, json=ask("go"), headers={"x-session-id": "pay-4"})).json()
    assert after["choices"][0]["message"]["content"] == "fresh answer"
