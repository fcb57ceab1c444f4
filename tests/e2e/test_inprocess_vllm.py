"""`kind: inprocess`: vLLM's server app runs inside the gateway process (its engine core in vLLM's own
child), reached without a socket. Served by `sentrail serve`, called with the official client: plain,
streamed and tool-calling chats work as with a managed child, a client that leaves mid-stream aborts the
request on the engine, and the engine's own metrics are on the gateway's `/metrics`."""

import time
from pathlib import Path

import httpx
import pytest
from openai import OpenAI

from engines.process import free_port

from .conftest import WEATHER, metric_total, serve, stop, stream_then_leave

pytestmark = pytest.mark.e2e
LONG_STORY = [{"role": "user", "content": "Write a very long story about a lighthouse keeper."}]


class InProcess:
    def __init__(self, url: str, pid: int) -> None:
        self.url, self.pid = url, pid
        self.client = OpenAI(base_url=f"{url}/v1", api_key="not-needed", max_retries=0, timeout=120)

    def metric(self, name: str) -> float:
        """Sum of a vLLM metric's samples, read from the gateway's own `/metrics`."""
        return metric_total(httpx.get(f"{self.url}/metrics", timeout=5).text, name)

    def children(self) -> list[str]:
        """Command lines of the gateway's child processes."""
        found = []
        for entry in Path("/proc").iterdir():
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                if parent == self.pid:
                    found.append((entry / "cmdline").read_bytes().replace(b"\0", b" ").decode())
            except (OSError, ValueError, IndexError):
                continue
        return found


@pytest.fixture(scope="module")
def inprocess(model, tmp_path_factory, gateway):  # `gateway`: its engine is up, so the model is prepared
    folder = tmp_path_factory.mktemp("inprocess")
    port = free_port()
    (folder / "policies").mkdir()  # no rails: the output rails' hold-back would hide how the engine streams
    config = {
        "port": port, "dev_mode": True, "data_dir": str(folder / "data"), "policies_dir": str(folder / "policies"),
        "models": [{"id": model, "engines": [{"kind": "inprocess", "max_concurrency": 8}]}],
    }  # fmt: skip
    process = serve(config, folder)
    yield InProcess(f"http://127.0.0.1:{port}", process.pid)
    stop(process)


def test_no_vllm_server_process_runs_beside_the_gateway(inprocess):
    children = inprocess.children()
    assert children, "vLLM's engine core runs in a child process"
    assert not [c for c in children if "vllm.entrypoints" in c], children


def test_plain_and_streamed_chat(inprocess, model):
    reply = inprocess.client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "Name three colours."}], max_tokens=24
    )
    assert reply.choices[0].message.content and reply.usage.completion_tokens > 0

    stream = inprocess.client.chat.completions.create(
        model=model, messages=LONG_STORY, max_tokens=48, stream=True, stream_options={"include_usage": True}
    )
    arrivals, usage = [], None
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            arrivals.append(time.monotonic())
        usage = chunk.usage or usage
    assert usage is not None and usage.completion_tokens > 0
    assert len(arrivals) >= 2 and arrivals[-1] - arrivals[0] > 0.05, "the text arrived in one piece, not streamed"


def test_forced_tool_call(inprocess, model):
    reply = inprocess.client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "What is the weather in Oslo?"}],
        tools=[WEATHER],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        max_tokens=48,
        temperature=0,
    )
    call = reply.choices[0].message.tool_calls[0]
    assert call.function.name == "get_weather" and "city" in call.function.arguments


def test_client_disconnect_mid_stream_aborts_on_the_engine(inprocess, model):
    stream_then_leave(inprocess.client, model, LONG_STORY, inprocess.metric)
