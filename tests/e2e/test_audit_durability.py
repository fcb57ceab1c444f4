"""Nothing lost: load through a gateway process (default embedded Redis, the real vLLM engine behind it),
SIGKILL it mid-load, restart it on the same data, and check that the audit chain verifies and that every
response a client received has its audit records."""

import json
import os
import signal
import subprocess
import sys
import threading
import time

import httpx
import pytest
import yaml

from engines.process import free_port
from gateway.cli import main

from .conftest import ROOT

pytestmark = pytest.mark.e2e


def start(config, port: int) -> subprocess.Popen:
    process = subprocess.Popen([sys.executable, "-m", "gateway.cli", "serve", "--config", str(config)], cwd=ROOT,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/v1/health/ready", timeout=1).status_code == 200:
                return process
        except httpx.HTTPError:
            pass
        assert process.poll() is None, "the gateway exited at start"
        time.sleep(0.2)
    process.kill()
    pytest.fail("the gateway did not become ready")


def test_sigkill_under_load_loses_no_acknowledged_record(gateway, model, tmp_path, capsys):
    port = free_port()
    config = tmp_path / "sentrail.yaml"
    config.write_text(yaml.safe_dump({
        "port": port, "dev_mode": True, "data_dir": str(tmp_path / "data"), "policies_dir": str(ROOT / "policies"),
        "models": [{"id": model, "engines": [{"kind": "remote", "url": gateway.engine_url}]}],
    }))  # fmt: skip
    process = start(config, port)
    received: list[str] = []  # request ids of complete responses the clients got
    stop = threading.Event()

    def client(worker: int) -> None:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
            step = 0
            while not stop.is_set():
                step += 1
                body = {"model": model, "messages": [{"role": "user", "content": f"Count to {step}."}], "max_tokens": 4}
                try:
                    response = http.post("/v1/chat/completions", json=body, headers={"x-session-id": f"load-{worker}"})
                    if response.status_code == 200 and response.json()["choices"]:
                        received.append(response.headers["x-request-id"])
                except (httpx.HTTPError, json.JSONDecodeError):
                    continue  # the gateway died under this request: the client got nothing

    workers = [threading.Thread(target=client, args=(i,)) for i in range(6)]
    for worker in workers:
        worker.start()
    time.sleep(3)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    time.sleep(0.5)
    stop.set()
    for worker in workers:
        worker.join()
    assert len(received) > 5, "the load did not get going"

    restarted = start(config, port)
    try:
        assert main(["audit", "verify", "--config", str(config)]) == 0
        assert "BROKEN" not in capsys.readouterr().out
        out = tmp_path / "audit.jsonl"
        assert main(["audit", "export", "--tenant", "dev", "--out", str(out), "--config", str(config)]) == 0
        records = [json.loads(line) for line in out.read_text().splitlines()]
        results = {r["request_id"] for r in records if r["type"] == "result"}
        requests = {r["request_id"] for r in records if r["type"] == "request"}
        missing = [request_id for request_id in received if request_id not in results or request_id not in requests]
        assert not missing, f"{len(missing)} of {len(received)} acknowledged responses have no audit records"
    finally:
        restarted.send_signal(signal.SIGTERM)
        restarted.wait(timeout=60)
