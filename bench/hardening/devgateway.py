"""A development-mode gateway (`sentrail serve --dev`) for the hardening runs: its own home and data
folder in a temporary directory (so its audit key and embedded Redis are its own), started in its own
process group, stopped with the group. Shared by fuzz.py and faults.py.

The home folder gets a link to the prepared embedded model of the default home (~/.cache/sentrail/models)
when there is one, so that nothing is built again; `<home>/audit.key` is then made by the gateway on its
first start (the development audit key), as on a developer's machine."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))  # bench/: shared helpers

from procs import stop_group, wait_ready  # noqa: E402

MODEL = "SmolLM2-135M-Instruct"
NAMED_CALL = {  # a named tool call: the first structured-output request an engine sees decides its backend
    "model": MODEL,
    "messages": [{"role": "user", "content": "What's the weather in Paris?"}],
    "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}],
    "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
    "max_tokens": 8,
}  # fmt: skip
SENTRAIL = ROOT / ".venv" / "bin" / "sentrail"
DEFAULT_HOME = Path(os.environ.get("SENTRAIL_HOME") or Path.home() / ".cache" / "sentrail")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class DevGateway:
    """`sentrail serve --dev` on a free port with `home` and `data_dir` under `workdir`."""

    def __init__(self, workdir: Path, *, max_new_tokens: int | None = None, fsync: str = "everysec") -> None:
        self.workdir = workdir
        self.home = workdir / "home"
        self.data_dir = workdir / "data"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = workdir / "gateway.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.home.mkdir(parents=True, exist_ok=True)
        models = DEFAULT_HOME / "models"
        if models.is_dir() and not (self.home / "models").exists():
            (self.home / "models").symlink_to(models)
        engine: dict[str, object] = {"kind": "vllm"}
        if max_new_tokens is not None:
            # vLLM's server-wide cap on output tokens (a request's max_tokens above it is lowered to it):
            # every generation stays cheap on a CPU, whatever the request asks for.
            engine["args"] = ["--override-generation-config", json.dumps({"max_new_tokens": max_new_tokens})]
        self.config = workdir / "sentrail.json"
        self.config.write_text(json.dumps({"port": self.port, "models": [{"id": MODEL, "engines": [engine]}],
                                           "redis_fsync": fsync}))  # fmt: skip

    @property
    def env(self) -> dict[str, str]:
        """The environment of the gateway and of the CLI commands that must find its Redis and audit key."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SENTRAIL_", "REDIS_URL"))}
        env.update(SENTRAIL_HOME=str(self.home), SENTRAIL_DATA_DIR=str(self.data_dir), SENTRAIL_LOG_FORMAT="json",
                   SENTRAIL_CONFIG=str(self.config))  # fmt: skip
        return env

    def start(self, timeout_s: float = 600) -> None:
        self.starts += 1
        with self.log_path.open("ab") as log:
            log.write(f'{{"event": "bench_gateway_start", "start": {self.starts}}}\n'.encode())
            self.process = subprocess.Popen(
                [str(SENTRAIL), "serve", "--dev"], cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        wait_ready(self.process, f"{self.url}/v1/health/ready", timeout_s, "sentrail", self.log_path)

    def stop(self) -> None:
        stop_group(self.process)
        self.process = None

    def kill9(self) -> int:
        """SIGKILL the gateway process alone (not its group: its children must fend for themselves)."""
        assert self.process is not None
        pid = self.process.pid
        os.kill(pid, signal.SIGKILL)
        self.process.wait(timeout=30)
        return pid

    def children(self) -> dict[int, str]:
        """pid -> command line of the gateway's direct children."""
        assert self.process is not None
        found = {}
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
                ppid = int(stat.rsplit(")", 1)[1].split()[1])
                if ppid == self.process.pid:
                    found[int(entry.name)] = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
            except (OSError, ValueError, IndexError):
                continue
        return found

    def redis_pid(self) -> int:
        pids = [pid for pid, cmd in self.children().items() if "redis-server" in cmd]
        if len(pids) != 1:
            raise RuntimeError(f"expected one embedded redis-server child, found {pids}")
        return pids[0]

    def cli(self, *args: str, timeout_s: float = 300) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(SENTRAIL), *args], cwd=ROOT, env=self.env, capture_output=True, text=True,
                              timeout=timeout_s)  # fmt: skip

    def get(self, path: str, timeout_s: float = 10) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(self.url + path, timeout=timeout_s) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def metrics(self) -> Counter[tuple[str, str, str]]:
        """`sentrail_http_requests_total` as (method, route, status) -> count."""
        _, body = self.get("/metrics")
        return parse_requests_total(body.decode())

    def log_lines(self, since: int = 0) -> list[dict[str, object]]:
        """The gateway's JSON log lines (from line `since`), non-JSON lines as {"raw": line}."""
        lines = []
        for line in self.log_path.read_text(errors="replace").splitlines()[since:]:
            try:
                lines.append(json.loads(line))
            except ValueError:
                lines.append({"raw": line})
        return lines


_SAMPLE = re.compile(r"^sentrail_http_requests_total\{(?P<labels>[^}]*)\}\s+(?P<value>\S+)$")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def parse_requests_total(text: str) -> Counter[tuple[str, str, str]]:
    counts: Counter[tuple[str, str, str]] = Counter()
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if match:
            labels = dict(_LABEL.findall(match["labels"]))
            counts[(labels.get("method", ""), labels.get("route", ""), labels.get("status", ""))] += int(
                float(match["value"])
            )
    return counts


def wait_for(check, timeout_s: float, interval_s: float = 0.2) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(interval_s)
    return False
