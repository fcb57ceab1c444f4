"""Two gateway processes sharing one Redis serve alternate steps of one agent session."""

import subprocess
import sys
import time

import httpx
import pytest
from openai import OpenAI

from engines.process import free_port

pytestmark = pytest.mark.e2e
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "strict": True,
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"],
                       "additionalProperties": False},
    },
}  # fmt: skip


@pytest.fixture(scope="module")
def second_gateway(gateway, model, tmp_path_factory):
    """`sentrail serve` in its own process: same Redis, the first gateway's vLLM engine as a remote engine."""
    port = free_port()
    config = tmp_path_factory.mktemp("second") / "sentrail.yaml"
    config.write_text(
        f"port: {port}\ndev_mode: true\nredis_url: {gateway.app.state.redis_url}\nmodels:\n"
        f"  - id: {model}\n    engines:\n      - {{kind: remote, url: '{gateway.engine_url}'}}\n"
    )
    process = subprocess.Popen([sys.executable, "-m", "gateway.cli", "serve", "--config", str(config)])
    base_url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"{base_url}/v1/health/ready", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        assert process.poll() is None and time.monotonic() < deadline, "the second gateway did not start"
        time.sleep(0.5)
    yield base_url
    process.terminate()
    process.wait(timeout=30)


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
