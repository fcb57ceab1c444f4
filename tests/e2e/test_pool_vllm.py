"""The engine pool with two real vLLM engines, one pinned to each core, behind one model (a `sentrail
serve` process): overload gets fast 429s with Retry-After while the admitted requests complete; SIGKILL
of one engine under load gives clean errors only to requests in flight on it, new requests go to the
other one, and the killed engine is restarted and serves again."""

import asyncio
import json
import os
import re
import signal
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest

from engines.process import free_port

from .conftest import ROOT, metric_total, serve, stop

pytestmark = pytest.mark.e2e
START_TIMEOUT_S = 300


class Served:
    def __init__(self, process: subprocess.Popen, port: int, log: Path) -> None:
        self.process, self.port, self.log = process, port, log
        self.url = f"http://127.0.0.1:{port}"

    def engine_name(self, port: int) -> str:
        """The pool's name for the engine on `port` (from the gateway's `engine_starting` log line)."""
        for line in self.log.read_text().splitlines():
            if '"engine_starting"' in line:
                event = json.loads(line)
                if event["port"] == port:
                    return event["engine"]
        raise AssertionError(f"no engine on port {port}")

    def engines(self) -> dict[int, int]:
        """vLLM child pid -> its port."""
        found = {}
        for pid in os.listdir("/proc"):
            try:
                with open(f"/proc/{pid}/stat") as stat:
                    parent = int(stat.read().rsplit(")", 1)[1].split()[1])
                with open(f"/proc/{pid}/cmdline", "rb") as cmd:
                    argv = cmd.read().split(b"\0")
            except (OSError, ValueError, IndexError):
                continue
            if parent == self.process.pid and b"vllm.entrypoints.openai.api_server" in argv:
                found[int(pid)] = int(argv[argv.index(b"--port") + 1])
        return found

    def metric(self, name: str, engine: str) -> float:
        text = httpx.get(f"{self.url}/metrics", timeout=5).text
        found = re.search(rf'^{name}\{{engine="{re.escape(engine)}"\}} (\S+)$', text, re.M)
        return float(found.group(1)) if found else -1.0

    def rss_mb(self) -> float:
        with open(f"/proc/{self.process.pid}/status") as status:
            return int(re.search(r"VmRSS:\s+(\d+)", status.read()).group(1)) / 1024


@pytest.fixture(scope="module")
def served(model, tmp_path_factory, gateway):  # `gateway`: its engine is up, so the model is prepared
    folder = tmp_path_factory.mktemp("pool")
    port = free_port()
    engines = [{"kind": "vllm", "cpus": str(core), "max_concurrency": 4} for core in (0, 1)]
    config = {
        "port": port, "dev_mode": True, "data_dir": str(folder / "data"), "policies_dir": str(ROOT / "policies"),
        "max_waiting": 4, "wait_timeout_s": 30, "models": [{"id": model, "engines": engines}],
    }  # fmt: skip  # a waiter outlasts one slow batch (CI saw 5 s per 8-token batch on one loaded core)
    process = serve(config, folder, START_TIMEOUT_S)
    yield Served(process, port, folder / "gateway.log")
    stop(process)


def body(model: str, tokens: int = 8) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": "Tell me about rivers."}], "max_tokens": tokens}


def test_the_engines_are_pinned_one_per_core(served):
    engines = served.engines()
    assert len(engines) == 2
    assert sorted(tuple(sorted(os.sched_getaffinity(pid))) for pid in engines) == [(0,), (1,)]


def test_overload_gets_fast_429s_and_the_admitted_complete(served, model):
    before = served.rss_mb()

    async def one(client: httpx.AsyncClient) -> tuple[int, float, str | None]:
        started = time.perf_counter()
        response = await client.post("/v1/chat/completions", json=body(model, 16))
        return response.status_code, time.perf_counter() - started, response.headers.get("retry-after")

    async def burst() -> list[tuple[int, float, str | None]]:
        limits = httpx.Limits(max_connections=200)
        async with httpx.AsyncClient(base_url=served.url, timeout=120, limits=limits) as client:
            return await asyncio.gather(*(one(client) for _ in range(96)))

    results = asyncio.run(burst())
    codes = [code for code, _, _ in results]
    assert set(codes) <= {200, 429}, codes
    refused = [(elapsed, retry) for code, elapsed, retry in results if code == 429]
    admitted = codes.count(200)
    assert admitted >= 8 and len(refused) >= 96 - 8 - 4 - 8  # 2 x 4 slots + 4 waiting (+ those freed meanwhile)
    assert all(retry is not None and int(retry) >= 1 for _, retry in refused)
    assert sorted(elapsed for elapsed, _ in refused)[len(refused) // 2] < 1.0  # refusals are fast
    assert served.rss_mb() - before < 200  # no unbounded queue


def test_a_killed_engine_fails_only_its_in_flight_requests_and_rejoins(served, model):
    outcomes: list[tuple[float, int, bool]] = []  # (started at, status, OpenAI error body when not 200)
    stop = threading.Event()

    def client(worker: int) -> None:
        with httpx.Client(base_url=served.url, timeout=60) as http:
            while not stop.is_set():
                started = time.monotonic()
                response = http.post("/v1/chat/completions", json=body(model), headers={"x-session-id": f"w{worker}"})
                clean = response.status_code == 200 or "error" in response.json()
                outcomes.append((started, response.status_code, clean))

    workers = [threading.Thread(target=client, args=(i,)) for i in range(6)]
    for worker in workers:
        worker.start()
    time.sleep(3)
    victim, victim_port = next(iter(served.engines().items()))
    name = served.engine_name(victim_port)
    killed_at = time.monotonic()
    os.kill(victim, signal.SIGKILL)

    def served_after_kill() -> int:
        return sum(1 for s, code, _ in list(outcomes) if code == 200 and s > killed_at + 0.5)

    deadline = time.monotonic() + 90  # load on the survivor until it has served six new requests (a loaded CPU
    while served_after_kill() < 6 and time.monotonic() < deadline:  # engine can take 5 s per batch)
        time.sleep(0.5)
    stop.set()
    for worker in workers:
        worker.join()
    assert all(clean for _, _, clean in outcomes), "an error without an OpenAI error body"
    late_failures = [(s - killed_at, code) for s, code, _ in outcomes if code != 200 and s > killed_at + 0.5]
    assert not late_failures, late_failures  # new requests went to the other engine
    assert served_after_kill() > 5

    deadline = time.monotonic() + START_TIMEOUT_S

    def rejoined() -> bool:
        restarted = served.metric("sentrail_engine_restarts", name) >= 1
        return restarted and served.metric("sentrail_engine_healthy", name) == 1

    while not rejoined():
        assert time.monotonic() < deadline, "the killed engine was not restarted"
        time.sleep(2)
    served_before = _vllm_successes(victim_port)
    with httpx.Client(base_url=served.url, timeout=60) as http:
        for session in range(12):  # sessions spread over both engines again
            assert http.post("/v1/chat/completions", json=body(model, 2), headers={"x-session-id": f"r{session}"}
                             ).status_code == 200  # fmt: skip
    assert _vllm_successes(victim_port) > served_before  # the restarted engine serves again


def _vllm_successes(port: int) -> float:
    return metric_total(httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text, "vllm:request_success_total")


def test_metrics_name_every_engine(served, model):
    text = httpx.get(f"{served.url}/metrics", timeout=5).text
    for index in (0, 1):
        for metric in ("sentrail_engine_in_flight", "sentrail_engine_healthy", "sentrail_engine_restarts"):
            assert f'{metric}{{engine="{model}#{index}"}}' in text
    assert json.loads(httpx.get(f"{served.url}/v1/health/ready", timeout=5).text)["models"] == {model: True}
