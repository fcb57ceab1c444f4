"""The HTTP surface over scripted engines: decoding, errors, streaming framing, probes, metrics, traces, logs."""

import json

import pytest

from engines.base import EngineRejected, EngineUnavailable
from tests.doubles import ScriptedEngine, tool_call_chunks

from .conftest import MODEL

CHAT = "/v1/chat/completions"


def chat(**fields):
    return {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], **fields}


def sse_events(text: str) -> list[str]:
    return [line[6:] for line in text.split("\n\n") if line.startswith("data: ")]


def assert_openai_error(response, status, code, param=None):
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == code and error["param"] == param and error["message"]
    assert "Traceback" not in response.text
    return error


async def test_non_streaming_returns_the_folded_answer(make_client):
    async with make_client() as client:
        response = await client.post(CHAT, json=chat())
    assert response.status_code == 200
    body = response.json()
    assert body["object"] == "chat.completion" and body["model"] == MODEL
    assert body["choices"][0]["message"] == {
        "content": "Hello world",
        "tool_calls": None,
        "refusal": None,
        "role": "assistant",
    }
    assert body["choices"][0]["finish_reason"] == "stop"
    assert body["usage"] == {"prompt_tokens": 7, "completion_tokens": 2, "total_tokens": 9}
    assert response.headers["x-request-id"].startswith("req_")


async def test_tool_calls_are_folded_for_non_streaming_clients(make_client):
    engine = ScriptedEngine(tool_call_chunks("lookup", ['{"q":', ' "x"}']))
    tools = [{"type": "function", "function": {"name": "lookup"}}]
    async with make_client(engine) as client:
        response = await client.post(CHAT, json=chat(tools=tools, tool_choice="required"))
    choice = response.json()["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["tool_calls"] == [
        {"id": "call_1", "function": {"name": "lookup", "arguments": '{"q": "x"}'}, "type": "function"}
    ]


@pytest.mark.parametrize("include_usage", [True, False])
async def test_streaming_frames_sse_and_honours_include_usage(make_client, include_usage):
    fields = {"stream": True, "stream_options": {"include_usage": include_usage}}
    async with make_client() as client:
        response = await client.post(CHAT, json=chat(**fields))
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    events = sse_events(response.text)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(c["object"] == "chat.completion.chunk" and c["model"] == MODEL for c in chunks)
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text == "Hello world"
    usage_chunks = [c for c in chunks if c.get("usage")]
    assert len(usage_chunks) == (1 if include_usage else 0)


@pytest.mark.parametrize(
    ("payload", "code", "param"),
    [
        (b"{not json", "invalid_json", None),
        (b"", "invalid_json", None),
        (json.dumps(chat(temperature=9)).encode(), "invalid_request", "temperature"),
        (json.dumps(chat(n=3)).encode(), "invalid_request", "n"),
        (
            json.dumps({"model": MODEL, "messages": [{"role": "robot", "content": "x"}]}).encode(),
            "invalid_request",
            "messages[0].role",
        ),
    ],
)
async def test_bad_requests_get_400_naming_the_param(make_client, payload, code, param):
    engine = ScriptedEngine()
    async with make_client(engine) as client:
        response = await client.post(CHAT, content=payload, headers={"content-type": "application/json"})
    assert_openai_error(response, 400, code, param)
    assert engine.requests == []


async def test_unknown_model_is_404(make_client):
    async with make_client() as client:
        response = await client.post(CHAT, json=chat(model="nope"))
        listing = await client.get("/v1/models")
        one = await client.get(f"/v1/models/{MODEL}")
        missing = await client.get("/v1/models/org/nope")
    assert_openai_error(response, 404, "model_not_found", "model")
    assert [m["id"] for m in listing.json()["data"]] == [MODEL]
    assert one.json()["id"] == MODEL and one.json()["object"] == "model"
    assert_openai_error(missing, 404, "model_not_found", "model")


async def test_body_over_the_limit_is_413(make_client):
    async with make_client(max_body_bytes=2048) as client:
        response = await client.post(CHAT, json=chat(messages=[{"role": "user", "content": "x" * 4096}]))
    assert_openai_error(response, 413, "request_too_large")


async def test_unknown_route_and_wrong_method_use_the_error_body(make_client):
    async with make_client() as client:
        assert_openai_error(await client.get("/v1/nothing"), 404, "not_found")
        assert_openai_error(await client.get(CHAT), 405, "method_not_allowed")


@pytest.mark.parametrize("stream", [False, True])
async def test_engine_failure_before_first_byte_is_a_json_error(make_client, stream):
    engine = ScriptedEngine(fail_at=0, error=EngineUnavailable("engine test#0 failed: ConnectError"))
    async with make_client(engine) as client:
        response = await client.post(CHAT, json=chat(stream=stream))
    assert response.headers["content-type"].startswith("application/json")
    assert_openai_error(response, 503, "engine_unavailable")


async def test_engine_rejection_is_the_clients_400(make_client):
    engine = ScriptedEngine(fail_at=0, error=EngineRejected("image input is not supported", "messages"))
    async with make_client(engine) as client:
        response = await client.post(CHAT, json=chat())
    assert_openai_error(response, 400, "invalid_request", "messages")


async def test_failure_after_first_byte_ends_the_stream_with_an_error_event(make_client):
    engine = ScriptedEngine(fail_at=2, error=EngineUnavailable("engine went away"))
    async with make_client(engine) as client:
        response = await client.post(CHAT, json=chat(stream=True))
    assert response.status_code == 200
    events = sse_events(response.text)
    assert "[DONE]" not in events
    assert json.loads(events[-1])["error"]["code"] == "engine_unavailable"
    assert engine.aborted  # the engine was told to stop


async def test_unexpected_errors_are_500_without_details(make_client):
    engine = ScriptedEngine(fail_at=0, error=KeyError("internal detail"))
    async with make_client(engine) as client:
        response = await client.post(CHAT, json=chat())
    error = assert_openai_error(response, 500, "internal_error")
    assert "internal detail" not in error["message"]


async def test_overload_fails_fast_with_retry_after(make_client):
    async with make_client(limit=1, max_waiting=0) as client:
        async with client.app.state.pool.acquire(MODEL):  # another request holds the only slot
            response = await client.post(CHAT, json=chat())
        assert_openai_error(response, 429, "overloaded")
        assert response.headers["retry-after"] == "1"
        assert (await client.post(CHAT, json=chat())).status_code == 200


async def test_probes_follow_engine_health(make_client):
    engine = ScriptedEngine()
    async with make_client(engine) as client:
        assert (await client.get("/v1/health/live")).status_code == 200
        ready = await client.get("/v1/health/ready")
        assert ready.status_code == 200 and ready.json()["models"] == {MODEL: True}
        engine.healthy = False
        not_ready = await client.get("/v1/health/ready")
        assert not_ready.status_code == 503 and not_ready.json()["models"] == {MODEL: False}
        assert (await client.get("/v1/health/live")).status_code == 200
    assert engine.started and engine.stopped


async def test_metrics_count_requests_and_tokens(make_client):
    async with make_client() as client:
        await client.post(CHAT, json=chat())
        await client.post(CHAT, json=chat(model="nope"))
        text = (await client.get("/metrics")).text
    assert 'sentrail_http_requests_total{method="POST",route="/v1/chat/completions",status="200"} 1.0' in text
    assert 'sentrail_http_requests_total{method="POST",route="/v1/chat/completions",status="404"} 1.0' in text
    assert f'sentrail_tokens_total{{direction="output",model="{MODEL}"}} 2.0' in text
    assert 'sentrail_http_request_duration_seconds_count{route="/v1/chat/completions"} 2.0' in text
    assert "sentrail_http_requests_in_flight" in text


async def test_request_id_spans_and_logs_correlate(make_client, spans, logs):
    async with make_client() as client:
        response = await client.post(CHAT, json=chat(temperature=0.3), headers={"x-request-id": "agent-step-17"})
    assert response.headers["x-request-id"] == "agent-step-17"
    finished = spans.get_finished_spans()
    engine_span = next(s for s in finished if s.name == f"chat {MODEL}")
    root = next(s for s in finished if s.parent is None)
    assert engine_span.context.trace_id == root.context.trace_id
    assert root.kind.name == "SERVER" and engine_span.kind.name == "CLIENT"
    attrs = engine_span.attributes
    assert attrs["gen_ai.operation.name"] == "chat" and attrs["gen_ai.request.temperature"] == 0.3
    assert attrs["gen_ai.usage.output_tokens"] == 2 and attrs["gen_ai.response.finish_reasons"] == ("stop",)
    assert attrs["sentrail.request_id"] == "agent-step-17"
    lines = [json.loads(line) for line in logs.getvalue().splitlines()]
    access = next(line for line in lines if line["event"] == "http_request")
    assert access["request_id"] == "agent-step-17" and access["status"] == 200


async def test_malformed_client_request_id_is_replaced(make_client):
    async with make_client() as client:
        response = await client.post(CHAT, json=chat(), headers={"x-request-id": "bad id\twith spaces"})
    assert response.headers["x-request-id"].startswith("req_")
