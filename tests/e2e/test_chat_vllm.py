"""End to end: the official `openai` client -> Sentrail -> a real vLLM engine with the embedded model."""

import json

import httpx
import jsonschema
import openai
import pytest

from .conftest import assert_freed_by_abort, stream_then_leave

pytestmark = pytest.mark.e2e

WEATHER_SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
    "required": ["city", "unit"],
    "additionalProperties": False,
}
PERSON_SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
    "required": ["name", "age"],
    "additionalProperties": False,
}


def test_non_streaming_chat(client, model, gateway):
    response = client.chat.completions.with_raw_response.create(
        model=model,
        messages=[{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Name a colour."}],
        max_tokens=16,
        temperature=0,
    )
    completion = response.parse()
    assert response.headers["x-request-id"]
    assert completion.model == model
    assert completion.choices[0].message.content.strip()
    assert completion.choices[0].finish_reason in ("stop", "length")
    assert completion.usage.prompt_tokens > 0 and 0 < completion.usage.completion_tokens <= 16
    span = next(
        s for s in gateway.spans.get_finished_spans() if s.attributes.get("gen_ai.response.id") == completion.id
    )
    assert span.name == f"chat {model}"
    assert span.attributes["gen_ai.usage.output_tokens"] == completion.usage.completion_tokens


def test_streaming_chat_with_usage(client, model):
    stream = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "Say hello to the team."}],
        max_tokens=24,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert text.strip()
    assert finish and finish[-1] in ("stop", "length")
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
    assert not chunks[-1].choices  # usage arrives in its own final chunk, as OpenAI sends it


def test_forced_tool_call_with_strict_schema(client, model):
    tool = {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather",
            "parameters": WEATHER_SCHEMA,
            "strict": True,
        },
    }
    completion = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "What is the weather in Paris in celsius?"}],
        tools=[tool],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        max_tokens=64,
        temperature=0,
    )
    calls = completion.choices[0].message.tool_calls
    assert calls and calls[0].function.name == "get_weather" and calls[0].id
    jsonschema.validate(json.loads(calls[0].function.arguments), WEATHER_SCHEMA)


def test_json_schema_response_validates(client, model):
    completion = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "Describe a person as JSON."}],
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "person", "schema": PERSON_SCHEMA, "strict": True},
        },
        max_tokens=64,
        temperature=0,
    )
    jsonschema.validate(json.loads(completion.choices[0].message.content), PERSON_SCHEMA)


LONG_STORY = [{"role": "user", "content": "Write a very long story about a dragon and a knight."}]


def test_client_disconnect_mid_stream_frees_the_engine(client, model, gateway):
    stream_then_leave(client, model, LONG_STORY, gateway.engine_metric)


def test_client_disconnect_before_a_plain_response_frees_the_engine(model, gateway):
    finished_before = gateway.engine_metric("vllm:request_success_total")
    body = {"model": model, "messages": LONG_STORY, "max_tokens": 2000, "temperature": 1.0, "seed": 7}
    with pytest.raises(httpx.ReadTimeout):  # the client gives up while the engine is generating
        httpx.post(f"{gateway.base_url}/v1/chat/completions", json=body, timeout=httpx.Timeout(5, read=1.5))
    assert_freed_by_abort(gateway.engine_metric, finished_before)


def test_unknown_model_is_404(client):
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "hi"}])
    assert caught.value.code == "model_not_found"
    assert caught.value.body["param"] == "model"


def test_malformed_json_is_400(gateway):
    response = httpx.post(
        f"{gateway.base_url}/v1/chat/completions", content=b'{"model": ', headers={"content-type": "application/json"}
    )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_json"


def test_invalid_field_is_400_naming_param(client, model):
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}], n=2)
    assert caught.value.body["param"] == "n"


def test_models_and_probes(client, model, gateway):
    assert [m.id for m in client.models.list()] == [model]
    assert client.models.retrieve(model).id == model
    ready = httpx.get(f"{gateway.base_url}/v1/health/ready")
    assert ready.status_code == 200 and ready.json()["models"] == {model: True}
    metrics = httpx.get(f"{gateway.base_url}/metrics").text
    assert 'sentrail_tokens_total{direction="output"' in metrics


def test_agent_loop_is_recorded_in_its_session(client, model, gateway):
    """A tool call, its result, and the answer: three messages' worth of agent loop in one session."""
    tool = {
        "type": "function",
        "function": {"name": "get_weather", "parameters": WEATHER_SCHEMA, "strict": True},
    }
    session = {"X-Session-Id": "e2e-agent-loop"}
    messages = [{"role": "user", "content": "What is the weather in Paris in celsius?"}]
    first = client.chat.completions.create(
        model=model, messages=messages, tools=[tool], tool_choice="required", max_tokens=64, temperature=0,
        extra_headers=session,
    )  # fmt: skip
    call = first.choices[0].message.tool_calls[0]
    messages += [
        first.choices[0].message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "18 degrees, sunny"},
    ]
    second = client.chat.completions.create(
        model=model, messages=messages, max_tokens=32, temperature=0, extra_headers=session
    )
    assert second.choices[0].message.content
    body = httpx.get(f"{gateway.base_url}/v1/sessions/e2e-agent-loop").json()
    assert body["session"]["steps"] == 2 and body["session"]["tool_calls"] == 1
    assert body["steps"][0]["emitted"]["tool_calls"][0]["id"] == call.id
    assert body["steps"][1]["received"] == [
        {"role": "tool", "tool_call_id": call.id, "known": True, "content": "18 degrees, sunny"}
    ]
    assert body["steps"][1]["flags"] == []


def test_responses_chain_of_three_turns(client, model):
    first = client.responses.create(
        model=model, input="My name is Ada.", instructions="Be brief.", max_output_tokens=16
    )
    second = client.responses.create(
        model=model, input="What is my name?", previous_response_id=first.id, max_output_tokens=16
    )
    third = client.responses.create(
        model=model, input="Say it again.", previous_response_id=second.id, max_output_tokens=16
    )
    for response in (first, second, third):
        assert response.object == "response" and response.output_text.strip()
        assert response.usage.output_tokens > 0
    assert third.previous_response_id == second.id
    assert client.responses.retrieve(third.id).output_text == third.output_text
    # the third turn saw the whole chain: its prompt is longer than the first two turns' prompts
    assert third.usage.input_tokens > second.usage.input_tokens > first.usage.input_tokens


def test_responses_stream_with_the_official_client(client, model):
    with client.responses.stream(model=model, input="Count to three.", max_output_tokens=16) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_response()
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    assert "response.output_text.delta" in kinds
    assert final.output_text.strip()
