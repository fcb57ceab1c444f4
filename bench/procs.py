"""Child processes of the benchmarks (gateways, servers): wait until one answers, stop it with its group."""

from __future__ import annotations

import os
import signal
import subprocess
import time
import urllib.request
from pathlib import Path


def wait_ready(process: subprocess.Popen, url: str, timeout_s: float, what: str, log_path: Path) -> None:
    """Poll `url` until it answers 200; raise with the log's tail if the process exits or time runs out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = log_path.read_text(errors="replace")[-3000:] if log_path.exists() else ""
            raise RuntimeError(f"{what} exited with {process.returncode}; see {log_path}\n{tail}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"{what} not ready after {timeout_s:.0f} s; see {log_path}")


def stop_group(process: subprocess.Popen | None) -> None:
    """SIGTERM the process group (started with start_new_session), SIGKILL after 20 s."""
    if process is None or process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
