"""Two gateway processes sharing one Redis serve alternate steps of one agent session."""

import httpx
import pytest
from openai import OpenAI

from engines.process import free_port

from .conftest import WEATHER, serve, stop

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def second_gateway(gateway, model, tmp_path_factory):
    """`sentrail serve` in its own process: same Redis, the first gateway's vLLM engine as a remote engine."""
    port = free_port()
    engines = [{"kind": "remote", "url": gateway.engine_url}]
    config = {"port": port, "dev_mode": True, "redis_url": gateway.app.state.redis_url,
              "models": [{"id": model, "engines": engines}]}  # fmt: skip
    process = serve(config, tmp_path_factory.mktemp("second"), timeout_s=60)
    yield f"http://127.0.0.1:{port}"
    stop(process, 30)


def test_alternate_steps_of_one_session_across_two_gateways(client, model, gateway, second_gateway):
    other = OpenAI(base_url=f"{second_gateway}/v1", api_key="not-needed", max_retries=0, timeout=120)
    session = {"X-Session-Id": "two-gateways"}
    messages = [{"role": "user", "content": "What is the weather in Oslo?"}]
    first = client.chat.completions.create(
        model=model,
        messages=messages,
        tools=[WEATHER],
        tool_choice="required",
        max_tokens=48,
        temperature=0,
        extra_headers=session,
    )  # fmt: skip  (gateway A emits the tool call)
    call = first.choices[0].message.tool_calls[0]
    messages += [
        first.choices[0].message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "-3 degrees, snow"},
    ]
    second = other.chat.completions.create(model=model, messages=messages, max_tokens=24, extra_headers=session)
    messages += [
        {"role": "assistant", "content": second.choices[0].message.content},
        {"role": "user", "content": "Thanks"},
    ]
    client.chat.completions.create(model=model, messages=messages, max_tokens=8, extra_headers=session)

    seen_by_a = httpx.get(f"{gateway.base_url}/v1/sessions/two-gateways").json()
    seen_by_b = httpx.get(f"{second_gateway}/v1/sessions/two-gateways").json()
    assert seen_by_a == seen_by_b
    assert seen_by_a["session"]["steps"] == 3 and seen_by_a["session"]["tool_calls"] == 1
    steps = seen_by_a["steps"]
    assert steps[0]["emitted"]["tool_calls"][0]["id"] == call.id
    assert steps[1]["received"][0] == {
        "role": "tool",
        "tool_call_id": call.id,
        "known": True,
        "content": "-3 degrees, snow",
    }
    assert steps[1]["flags"] == [] and steps[2]["received"] == [{"role": "user", "content": "Thanks"}]
