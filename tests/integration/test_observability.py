"""Logs and spans of one step are correlated: every log line of the step names the trace, the request,
the session and the tenant; every span of the step carries the tenant and the session."""

import json

from tests.doubles import ScriptedEngine, calls_chunks

from .conftest import MODEL


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
