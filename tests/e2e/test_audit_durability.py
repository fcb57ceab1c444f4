"""Nothing lost: load through a gateway process (default embedded Redis, the real vLLM engine behind it),
SIGKILL it mid-load, restart it on the same data, and check that the audit chain verifies and that every
response a client received has its audit records."""

import json
import os
import signal
import threading
import time

import httpx
import pytest

from engines.process import free_port
from gateway.cli.main import main

from .conftest import ROOT, serve, stop

pytestmark = pytest.mark.e2e


def test_sigkill_under_load_loses_no_acknowledged_record(gateway, model, tmp_path, capsys):
    port = free_port()
    settings = {
        "port": port, "dev_mode": True, "data_dir": str(tmp_path / "data"), "policies_dir": str(ROOT / "policies"),
        "models": [{"id": model, "engines": [{"kind": "remote", "url": gateway.engine_url}]}],
    }  # fmt: skip
    config = tmp_path / "sentrail.yaml"
    process = serve(settings, tmp_path, timeout_s=120)
    received: list[str] = []  # request ids of complete responses the clients got
    done = threading.Event()

    def client(worker: int) -> None:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
            step = 0
            while not done.is_set():
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
    deadline = time.monotonic() + 60  # under load: a few responses acknowledged, more in flight (a busy CPU
    while len(received) < 6 and time.monotonic() < deadline:  # engine can take seconds for its first batch)
        time.sleep(0.1)
    time.sleep(1)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    time.sleep(0.5)
    done.set()
    for worker in workers:
        worker.join()
    assert len(received) > 5, "the load did not get going"

    restarted = serve(settings, tmp_path, timeout_s=120)
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
        stop(restarted, 60)
