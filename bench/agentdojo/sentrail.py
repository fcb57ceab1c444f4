"""Sentrail as a child process for one configuration: `sentrail serve --dev` from the project venv, in
front of the scripted engine, with the configuration's policy folder and a fresh data directory (so its
embedded Redis starts empty). Stdlib only (PyYAML is not needed: the settings file is JSON, which
Sentrail reads by its `.json` suffix)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

from engine import MODEL_ID

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/: shared helpers
from procs import stop_group, wait_ready

ROOT = Path(__file__).resolve().parents[2]
SENTRAIL = ROOT / ".venv" / "bin" / "sentrail"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class SentrailProcess:
    """One gateway: started with `start()`, ready when `/v1/health/ready` answers 200, stopped with `stop()`."""

    def __init__(self, policies: Path, engine_url: str, workdir: Path, name: str, source: Path | None = None) -> None:
        self.policies = policies
        self.source = source  # a Sentrail source tree to serve from instead of the checkout (a git snapshot)
        self.engine_url = engine_url
        self.workdir = workdir / name
        self.name = name
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = self.workdir / "sentrail.log"

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self, timeout_s: float = 120.0) -> SentrailProcess:
        self.workdir.mkdir(parents=True, exist_ok=True)
        settings = {
            "log_level": "warning",
            "log_format": "json",
            "max_waiting": 64,
            "drain_s": 1,  # stopped between suites with nothing in flight: no need to wait for idle keep-alives
            "models": [
                {"id": MODEL_ID, "engines": [{"kind": "remote", "url": self.engine_url, "max_concurrency": 64}]}
            ],
        }
        config = self.workdir / "settings.json"
        config.write_text(json.dumps(settings, indent=2))
        env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "SENTRAIL_", "REDIS_URL"))}
        env.update(SENTRAIL_POLICIES_DIR=str(self.policies), SENTRAIL_HOME=str(self.workdir / "home"),
                   SENTRAIL_DATA_DIR=str(self.workdir / "data"))  # fmt: skip
        command = [str(SENTRAIL), "serve", "--dev", "--config", str(config), "--port", str(self.port)]
        if self.source is not None:  # the project venv's interpreter, importing the other tree first
            command[:1] = [str(ROOT / ".venv" / "bin" / "python"), "-m", "gateway.cli"]
            env["PYTHONPATH"] = str(self.source)
        log = self.log_path.open("wb")
        self.process = subprocess.Popen(command, cwd=self.source or ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
        self._wait_ready(timeout_s)
        return self

    def _wait_ready(self, timeout_s: float) -> None:
        assert self.process is not None
        url = f"http://127.0.0.1:{self.port}/v1/health/ready"
        try:
            wait_ready(self.process, url, timeout_s, f"sentrail ({self.name})", self.log_path)
        except RuntimeError:
            self.stop()
            raise

    def stop(self) -> None:
        """SIGTERM the gateway's process group (its embedded Redis too), SIGKILL after 20 s."""
        stop_group(self.process)

    def version(self) -> str:
        """The git commit of the Sentrail checkout that serves (with a note when the tree has edits)."""
        head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--", "gateway", "rails", "engines"],
                               capture_output=True, text=True)  # fmt: skip
        return head.stdout.strip() + (" (with uncommitted changes)" if dirty.stdout.strip() else "")
