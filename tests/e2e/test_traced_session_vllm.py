"""One agent session through the official client and the real engine (an input rail hit, an allowed and
a denied tool call, an answer) yields: the span tree in a real OTLP receiver, log lines that match it by
trace id, and an audit timeline that `sentrail audit verify` accepts (and rejects once a record is edited)."""

import json

import httpx
import pytest
import redis

from gateway.cli.main import main
from gateway.observability import configure_logging

from .test_tools_vllm import TOOLS, fetched_history, step

pytestmark = pytest.mark.e2e
SESSION = "e2e-traced"


def trace_of(gateway, request_id: str) -> str:
    lines = [json.loads(line) for line in gateway.logs.buffer.getvalue().splitlines() if request_id in line]
    traces = {line.get("trace_id") for line in lines}
    assert len(traces) == 1 and None not in traces, lines
    return traces.pop()


def test_a_session_is_traced_logged_and_audited(client, model, gateway, tmp_path, capsys):
    configure_logging("json", "info", stream=gateway.logs, cache=False)  # CLI runs in other tests reconfigure it
    user = {"role": "user", "content": "Fetch the news and mail bob@example.com a summary."}
    fetched, history = fetched_history(client, model, SESSION, user)
    denied = step(client, model, SESSION, history, "run_shell")
    answer = client.chat.completions.with_raw_response.create(
        model=model, messages=[*history, {"role": "user", "content": "Summarise."}], tools=TOOLS, tool_choice="none",
        max_tokens=16, temperature=0, extra_headers={"X-Session-Id": SESSION})  # fmt: skip
    assert answer.parse().choices[0].message.content
    assert gateway.app.state.tracer_provider.force_flush(10_000)

    request_ids = [r._request_id for r in (fetched, denied)] + [answer.headers["x-request-id"]]
    assert all(request_ids)
    expected = [("apply_guardrail input.pii", "tool_policy web_fetch"), ("tool_policy run_shell",), ()]
    for request_id, names in zip(request_ids, expected, strict=True):
        spans = gateway.otlp.trace(trace_of(gateway, request_id))
        (root,) = [s for s in spans if s["parent_id"] is None]
        assert root["name"] == "POST /v1/chat/completions" and root["kind"] == 2  # SERVER
        assert root["attributes"]["gen_ai.conversation.id"] == SESSION and root["service"] == "sentrail"
        ids = {s["span_id"] for s in spans}
        assert all(s["parent_id"] in ids for s in spans if s is not root)  # one tree
        (chat,) = [s for s in spans if s["name"] == f"chat {model}"]
        assert chat["kind"] == 3  # CLIENT
        attributes = chat["attributes"]
        assert attributes["gen_ai.operation.name"] == "chat" and attributes["gen_ai.usage.output_tokens"] > 0
        assert attributes["gen_ai.response.id"] and attributes["gen_ai.response.finish_reasons"]
        assert {s["name"] for s in spans} >= set(names)
        for span in spans:
            assert span["attributes"].get("sentrail.tenant") == "dev", span["name"]
    denied_span = next(s for s in gateway.otlp.spans if s["name"] == "tool_policy run_shell")
    assert denied_span["attributes"]["sentrail.tool.decision"] == "deny"
    assert denied_span["attributes"]["sentrail.policy.rule"] == "no-shell"

    config = tmp_path / "sentrail.yaml"
    config.write_text(f"redis_url: {gateway.app.state.redis_url}\n")
    assert main(["audit", "show", SESSION, "--config", str(config)]) == 0
    timeline = capsys.readouterr().out
    assert "input.pii (input): modify: masked EMAIL" in timeline
    assert "run_shell" in timeline and "deny by rule no-shell" in timeline
    assert main(["audit", "verify", "--tenant", "dev", "--config", str(config)]) == 0

    store = redis.Redis.from_url(gateway.app.state.redis_url)  # an intruder edits one record
    stream = "sentrail:audit:{dev}:stream"
    entries = store.xrange(stream)
    index = next(i for i, (_, f) in enumerate(entries) if b'"tool":"run_shell"' in f[b"r"])
    record = json.loads(entries[index][1][b"r"])
    record["action"] = "allow"
    store.delete(stream)
    for i, (entry_id, fields) in enumerate(entries):
        store.xadd(stream, {"r": json.dumps(record) if i == index else fields[b"r"]}, id=entry_id)
    store.close()
    assert main(["audit", "verify", "--tenant", "dev", "--config", str(config)]) == 1
    assert f"record {entries[index][0].decode()} (seq {record['seq']}) was edited" in capsys.readouterr().out
    httpx.get(f"{gateway.base_url}/v1/health/live").raise_for_status()
