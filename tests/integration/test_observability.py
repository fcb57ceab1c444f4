"""Logs and spans of one step are correlated: every log line of the step names the trace, the request,
the session and the tenant; every span of the step carries the tenant and the session."""

import json

from tests.doubles import ScriptedEngine, calls_chunks

from .conftest import MODEL

MAIL = {"model": MODEL, "messages": [{"role": "user", "content": "mail bob@example.com"}]}


async def test_log_lines_and_spans_of_a_step_share_ids(make_client, logs, spans):
    engine = ScriptedEngine(calls_chunks(("lookup", "{}", "call_1")))
    body = {"model": MODEL, "messages": [{"role": "user", "content": "mail bob@example.com"}]}
    async with make_client(engine) as client:
        response = await client.post("/v1/chat/completions", json=body, headers={"x-session-id": "observed"})
    request_id = response.headers["x-request-id"]
    lines = [json.loads(line) for line in logs.getvalue().splitlines() if request_id in line]
    events = {line["event"] for line in lines}
    assert {"tool_call_decided", "http_request"} <= events
    traces = {line.get("trace_id") for line in lines}
    assert len(traces) == 1 and None not in traces
    for line in lines:
        if line["event"] != "http_request":
            assert (line["session_id"], line["tenant"]) == ("observed", "dev"), line
    (trace_id,) = traces
    mine = [s for s in spans.get_finished_spans() if format(s.context.trace_id, "032x") == trace_id]
    names = {s.name for s in mine}
    assert {"POST /v1/chat/completions", f"chat {MODEL}", "tool_policy lookup", "apply_guardrail input.pii"} <= names
    for span in mine:
        if span.name.startswith(("chat ", "tool_policy", "apply_guardrail", "POST")):
            assert span.attributes["sentrail.tenant"] == "dev", span.name
            assert span.attributes["gen_ai.conversation.id"] == "observed", span.name
    decided = next(line for line in lines if line["event"] == "tool_call_decided")
    tool_span = next(s for s in mine if s.name == "tool_policy lookup")
    assert decided["span_id"] == format(tool_span.context.span_id, "016x")


async def test_a_callers_traceparent_continues_its_trace(make_client, spans):
    trace_id, parent_id = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    async with make_client() as client:
        response = await client.post("/v1/chat/completions", json=MAIL,
                                     headers={"traceparent": f"00-{trace_id}-{parent_id}-01"})  # fmt: skip
    assert response.status_code == 200
    (server,) = [s for s in spans.get_finished_spans() if s.name == "POST /v1/chat/completions"]
    assert format(server.context.trace_id, "032x") == trace_id
    assert format(server.parent.span_id, "016x") == parent_id
    assert server.attributes["http.response.status_code"] == 200 and server.attributes["http.route"]


async def test_content_is_not_traced_by_default(make_client, spans):
    async with make_client() as client:
        await client.post("/v1/chat/completions", json=MAIL)
    (plain,) = [s for s in spans.get_finished_spans() if s.name == f"chat {MODEL}"]
    assert "gen_ai.input.messages" not in plain.attributes and "gen_ai.output.messages" not in plain.attributes


async def test_traced_content_is_what_passed_the_rails(make_client, spans):
    async with make_client(trace_content=True) as client:
        await client.post("/v1/chat/completions", json=MAIL)
    (traced,) = [s for s in spans.get_finished_spans() if s.name == f"chat {MODEL}"]
    sent = json.loads(traced.attributes["gen_ai.input.messages"])
    assert sent == [{"role": "user", "content": "mail [EMAIL]"}]
    assert json.loads(traced.attributes["gen_ai.output.messages"])[0]["content"] == "Hello world"
    guard_span = next(s for s in spans.get_finished_spans() if s.name == "apply_guardrail input.pii")
    assert guard_span.attributes["gen_ai.guardrail.policy.version"]
