"""One real gateway per test session: the Litestar app served by uvicorn on loopback, over a managed
vLLM server running the embedded SmolLM2 model on CPU. Tests talk to it with the official `openai` client."""

import io
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
import uvicorn
import yaml
from openai import OpenAI
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from engines.models import EMBEDDED_MODEL_ID, prepare_embedded_model
from engines.process import free_port
from gateway.http.app import create_app
from gateway.observability import configure_logging
from gateway.settings import load_settings
from tests.otlp_receiver import OtlpReceiver

STARTUP_TIMEOUT_S = 600
ROOT = Path(__file__).resolve().parents[2]
FORBIDDEN = "project nightingale"
NEMO_DENIED = "launch codes"  # a NeMo Guardrails regex rail on input blocks this
WEATHER = {  # a strict tool the e2e tests offer the model
    "type": "function",
    "function": {
        "name": "get_weather",
        "strict": True,
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"],
                       "additionalProperties": False},
    },
}  # fmt: skip


class Tee(io.TextIOBase):
    """Log lines to the console (for whoever reads the test output) and into a buffer (for the tests)."""

    def __init__(self) -> None:
        self.buffer = io.StringIO()

    def write(self, text: str) -> int:
        sys.stderr.write(text)
        return self.buffer.write(text)

    def isatty(self) -> bool:
        return False


class Gateway:
    def __init__(self, base_url: str, app, spans: InMemorySpanExporter, otlp: OtlpReceiver, logs: Tee) -> None:
        self.base_url = base_url
        self.app = app
        self.spans = spans
        self.otlp = otlp
        self.logs = logs

    @property
    def engine_url(self) -> str:
        return self.app.state.pool.engines()[0].base_url

    def engine_metric(self, name: str) -> float:
        """Sum of a metric's samples (over all labels) on the vLLM engine's own Prometheus endpoint."""
        return metric_total(httpx.get(f"{self.engine_url}/metrics", timeout=5).text, name)


def metric_total(text: str, name: str) -> float:
    """Sum of a Prometheus metric's samples over its labels. vLLM sometimes counts a request that was
    aborted in `request_success` too, under `finished_reason="abort"` (when the abort meets an engine
    step in flight): that is not a finish, so those samples are left out."""
    samples = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name + "{") and 'finished_reason="abort"' not in line]  # fmt: skip
    assert samples, f"{name} is not in the metrics"
    return sum(samples)


def stream_then_leave(client, model: str, messages: list, metric) -> None:
    """Start a long streamed story, read its first chunks, check that the engine is generating it, close the
    stream (the client goes away) and check that the engine is freed by an abort, not by finishing. `metric`
    reads a vLLM metric's total. Each wait polls (the engine's gauges move a step after the text does) and a
    failure says what the engine's counters and the text showed."""
    finished_before = metric("vllm:request_success_total")
    stream = client.chat.completions.create(
        model=model, messages=messages, max_tokens=2000, temperature=1.0, seed=7, stream=True
    )
    text, finish = "", None
    for index, chunk in enumerate(stream):
        text += (chunk.choices[0].delta.content or "") if chunk.choices else ""
        finish = chunk.choices[0].finish_reason if chunk.choices else finish
        if index == 3:
            break
    _wait_for(metric, "vllm:num_requests_running", 1, f"the engine is not generating the story ({text!r}, {finish})")
    stream.close()  # the client goes away mid-stream
    assert_freed_by_abort(metric, finished_before)


def assert_freed_by_abort(metric, finished_before: float) -> None:
    """vLLM counts a request in request_success_total only when it finishes (stop/length/...), not when
    it is aborted: an abandoned request must leave the engine idle without adding to that count."""
    _wait_for(metric, "vllm:num_requests_running", 0, "the engine kept generating for a client that left")
    assert metric("vllm:request_success_total") == finished_before, "it finished instead of aborting"


def _wait_for(metric, name: str, value: float, why: str, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while (seen := metric(name)) != value:
        if time.monotonic() > deadline:
            counts = {n: metric(f"vllm:{n}") for n in ("num_requests_running", "num_requests_waiting",
                                                        "request_success_total")}  # fmt: skip
            pytest.fail(f"{why}: {name} is {seen}, not {value}, after {timeout_s} s; the engine's counts: {counts}")
        time.sleep(0.1)


def serve(config: dict, folder: Path, timeout_s: float = 300) -> subprocess.Popen:
    """`sentrail serve` in its own process with `config` (written to `folder`), its output in
    `folder/gateway.log`; returns once `/v1/health/ready` answers 200."""
    path = folder / "sentrail.yaml"
    path.write_text(yaml.safe_dump(config))
    with (folder / "gateway.log").open("ab") as log:
        process = subprocess.Popen([sys.executable, "-m", "gateway.cli", "serve", "--config", str(path)], cwd=ROOT,
                                   stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{config['port']}/v1/health/ready", timeout=2).status_code == 200:
                return process
        except httpx.HTTPError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"the gateway did not become ready; see {folder / 'gateway.log'}")
        time.sleep(0.3)


def stop(process: subprocess.Popen, timeout_s: float = 90) -> None:
    """SIGTERM (a graceful drain), as Kubernetes stops a pod."""
    process.terminate()
    process.wait(timeout=timeout_s)


@pytest.fixture(scope="session")
def gateway(tmp_path_factory):
    """The product's default path: the embedded Redis (under a fresh data dir) and the embedded model."""
    logs = Tee()
    configure_logging("json", "info", stream=logs, cache=False)
    otlp = OtlpReceiver()  # the standard OTel variables turn OTLP export on, as in production
    data_dir = str(tmp_path_factory.mktemp("data"))
    # the shipped policies folder with the strict example's rules (the e2e tests exercise its web, e-mail,
    # shell and payment rules and its blocking injection rail), plus one deny phrase and one NeMo rail
    policies = Path(shutil.copytree(ROOT / "policies", tmp_path_factory.mktemp("e2e") / "policies"))
    strict = ROOT / "policies" / "examples" / "strict-agent"
    shutil.copy(strict / "tools.yaml", policies / "tools.yaml")
    rails = yaml.safe_load((strict / "rails.yaml").read_text())
    rails["stages"]["output"].append({"rail": "deny", "keywords": [FORBIDDEN]})
    rails["stages"]["input"].append({"rail": "nemo", "name": "input.nemo_regex", "config": "nemo/regex"})
    (policies / "nemo" / "regex").mkdir(parents=True)
    nemo = {"rails": {"config": {"regex_detection": {"input": {"patterns": [NEMO_DENIED], "case_insensitive": True}}},
                      "input": {"flows": ["regex check input"]}}}  # fmt: skip
    (policies / "nemo" / "regex" / "config.yml").write_text(yaml.safe_dump(nemo))
    (policies / "rails.yaml").write_text(yaml.safe_dump(rails))
    settings = load_settings(environ={}, port=free_port(), dev_mode=True, data_dir=data_dir, policies_dir=str(policies))
    prepare_embedded_model(settings.home_path)
    spans = InMemorySpanExporter()
    os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"] = otlp.url
    try:
        app = create_app(settings, span_processors=[SimpleSpanProcessor(spans)])
    finally:
        del os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=settings.port, log_config=None, lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while not server.started:
        if not thread.is_alive():
            pytest.fail("the gateway failed to start (see the log above)")
        if time.monotonic() > deadline:
            pytest.fail("the gateway did not start in time")
        time.sleep(0.5)
    yield Gateway(f"http://127.0.0.1:{settings.port}", app, spans, otlp, logs)
    server.should_exit = True
    thread.join(timeout=60)  # the receiver stays up (a daemon thread) for the exporter's last flush


@pytest.fixture(scope="session")
def client(gateway):
    return OpenAI(base_url=f"{gateway.base_url}/v1", api_key="not-needed", max_retries=0, timeout=120)


@pytest.fixture(scope="session")
def model():
    return EMBEDDED_MODEL_ID
