"""What Sentrail's MCP gateway adds to one `tools/call`, against calling the same MCP server directly.

Side by side in one run, in alternating rounds, with the `mcp` SDK's client (streamable HTTP to Sentrail):
  direct    the client talks to the MCP server itself: tests/mcp_servers/notes.py over streamable HTTP (the same
            server process Sentrail fronts), and mcp-server-time over stdio (a process of its own, the same
            program Sentrail launches)
  sentrail  the client calls Sentrail's /mcp (`sentrail serve --dev`, its own process, embedded Redis, the shipped
            rails.yaml and tools.yaml), which judges the call (tool policy over the session), calls the upstream,
            runs the tool_result rails on the result and commits the step with its audit records
  bare      the same without rails.yaml and tools.yaml (no rail, no policy): the MCP hop, the pin check, the
            session step and its audit records, i.e. the floor under the judging
Calls are sequential (one client, concurrency 1); every --session-calls calls start a new session (an agent
task), sent as X-Session-Id. Latency is per call, as the client sees it (p50, p99).

    .venv/bin/python bench/mcp_overhead.py [--calls 300] [--rounds 3] [--out bench/results/mcp_overhead.md]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import httpx2  # noqa: E402
from mcp import Client  # noqa: E402
from mcp.client.stdio import StdioServerParameters  # noqa: E402
from mcp.client.streamable_http import streamable_http_client  # noqa: E402

from engines.process import free_port  # noqa: E402

NOTES = [sys.executable, "-m", "tests.mcp_servers.notes"]
TIME = [sys.executable, "-m", "mcp_server_time", "--local-timezone", "UTC"]
ZONES = ["Europe/Paris", "Europe/London", "Asia/Tokyo", "America/New_York", "Australia/Sydney", "UTC",
         "Europe/Berlin", "Asia/Kolkata", "America/Chicago", "Africa/Cairo"]  # fmt: skip
CASES = {  # name -> (tool as Sentrail exposes it, tool upstream, arguments of the i-th call)
    "notes over HTTP: echo": ("echo", "echo", lambda i: {"text": f"The meeting moved to Thursday, room {i}."}),
    "mcp-server-time over stdio: get_current_time": (
        "get_current_time",
        "get_current_time",
        lambda i: {"timezone": ZONES[i % len(ZONES)]},
    ),
}  # fmt: skip  (the arguments vary: the shipped policy refuses a 6th identical call in a session as a loop)


PATHS = {"direct": "direct", "sentrail": "Sentrail (shipped rails and tools.yaml)",
         "bare": "Sentrail, no rails.yaml or tools.yaml"}  # fmt: skip


def wait_line(process: subprocess.Popen, needle: bytes) -> None:
    assert process.stderr is not None
    while needle not in (line := process.stderr.readline()):
        if not line:
            raise RuntimeError(f"process exited before printing {needle!r}")


def start_upstream(port: int) -> subprocess.Popen:
    process = subprocess.Popen([*NOTES, "--http", str(port)], cwd=ROOT, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE)  # fmt: skip
    wait_line(process, b"Uvicorn running")
    return process


def start_sentrail(folder: Path, port: int, upstream_url: str, policies_too: bool) -> subprocess.Popen:
    folder.mkdir()
    policies = folder / "policies"
    policies.mkdir()
    for name in ("rails.yaml", "tools.yaml") if policies_too else ():
        (policies / name).write_text((ROOT / "policies" / name).read_text())
    (policies / "mcp.yaml").write_text(
        "version: 1\nservers:\n"
        f"  - name: notes\n    url: {upstream_url}\n"
        f"  - name: time\n    command: [python, -m, mcp_server_time, --local-timezone, UTC]\n"
    )
    config = folder / "sentrail.yaml"
    config.write_text(
        f"port: {port}\nhome: {folder / 'home'}\npolicies_dir: {policies}\nlog_level: info\nlog_format: json\n"
        "models:\n  - id: stub\n    engines: [{kind: remote, url: 'http://127.0.0.1:9'}]\n"
    )
    process = subprocess.Popen([str(Path(sys.executable).parent / "sentrail"), "serve", "--dev", "--config",
                                str(config)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # fmt: skip
    assert process.stdout is not None
    while b"Uvicorn running" not in (line := process.stdout.readline()):  # bound: it takes connections
        if not line:
            raise RuntimeError("sentrail did not start")
    threading.Thread(target=lambda: [None for _ in process.stdout], daemon=True).start()  # keep its pipe drained
    return process


@contextlib.asynccontextmanager
async def http_client(url: str, headers: dict[str, str]) -> AsyncIterator[Client]:
    http = httpx2.AsyncClient(headers=headers, timeout=60)
    async with http, Client(streamable_http_client(url, http_client=http), cache=None) as client:
        yield client


async def batch(client: Client, tool: str, arguments: Any, calls: int) -> list[float]:
    out = []
    for i in range(calls):
        started = time.perf_counter()
        result = await client.call_tool(tool, arguments(i))
        out.append(time.perf_counter() - started)
        if result.is_error:
            raise RuntimeError(f"{tool}: {result.content}")
    return out


async def sentrail_batch(base: str, tool: str, arguments: Any, calls: int, session_calls: int, tag: str) -> list:
    out: list[float] = []
    for start in range(0, calls, session_calls):
        headers = {"X-Session-Id": f"bench-{tag}-{start}-{time.time_ns()}"}
        async with http_client(f"{base}/mcp", headers) as client:
            await client.list_tools()
            out += await batch(client, tool, arguments, min(session_calls, calls - start))
    return out


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def run(calls: int, rounds: int, session_calls: int) -> dict[str, dict[str, list[float]]]:
    folder = Path(tempfile.mkdtemp(prefix="sentrail-mcp-bench-"))
    upstream_port, sentrail_port = free_port(), free_port()
    upstream_url = f"http://127.0.0.1:{upstream_port}/mcp"
    upstream = start_upstream(upstream_port)
    bare_port = free_port()
    gateways = [start_sentrail(folder / "shipped", sentrail_port, upstream_url, True),
                start_sentrail(folder / "bare", bare_port, upstream_url, False)]  # fmt: skip
    bases = {"sentrail": f"http://127.0.0.1:{sentrail_port}", "bare": f"http://127.0.0.1:{bare_port}"}
    times: dict[str, dict[str, list[float]]] = {case: {path: [] for path in PATHS} for case in CASES}
    try:
        for base in bases.values():
            async with http_client(f"{base}/mcp", {}) as probe:  # Sentrail's upstreams are up once it lists them
                for _ in range(100):
                    if {"echo", "get_current_time"} <= {t.name for t in (await probe.list_tools()).tools}:
                        break
                    await asyncio.sleep(0.2)
        stdio = StdioServerParameters(command=TIME[0], args=TIME[1:], cwd=str(ROOT))
        async with http_client(upstream_url, {}) as notes, Client(stdio, cache=None) as clock:
            direct = {"notes over HTTP: echo": notes, "mcp-server-time over stdio: get_current_time": clock}
            for case, (exposed, tool, arguments) in CASES.items():  # warm-up, not counted
                await batch(direct[case], tool, arguments, 20)
                for base in bases.values():
                    await sentrail_batch(base, exposed, arguments, 20, session_calls, "warm")
            for round_ in range(rounds):
                for case, (exposed, tool, arguments) in CASES.items():
                    times[case]["direct"] += await batch(direct[case], tool, arguments, calls)
                    for path, base in bases.items():
                        times[case][path] += await sentrail_batch(base, exposed, arguments, calls, session_calls,
                                                                  f"{round_}")  # fmt: skip
                print(f"round {round_ + 1}/{rounds} done", file=sys.stderr)
    finally:
        for process in (*gateways, upstream):
            process.terminate()
        for process in (*gateways, upstream):
            process.wait(30)
    return times


def report(times: dict[str, dict[str, list[float]]], args: argparse.Namespace) -> str:
    lines = [
        "# MCP gateway: added latency per tools/call",
        "",
        f"`bench/mcp_overhead.py --calls {args.calls} --rounds {args.rounds} --session-calls {args.session_calls}`, "
        f"{time.strftime('%Y-%m-%d')}, {platform.machine()}, {os.cpu_count()} cores shared with other work, "
        "Python " + platform.python_version() + ".",
        "",
        "One client, sequential calls, the `mcp` SDK over streamable HTTP to Sentrail (`sentrail serve --dev`, "
        "embedded Redis, the shipped rails.yaml and tools.yaml; and a second one without them: no rail, no policy, "
        "still the pin check, the session step and its audit records); direct: the same client to the MCP server "
        f"itself. Each session (X-Session-Id) holds {args.session_calls} calls. Milliseconds per call, as the "
        "client sees it.",
        "",
        "| tool | path | calls | p50 | p99 | added p50 | added p99 | ratio p50 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for case, paths in times.items():
        d50, d99 = percentile(paths["direct"], 0.5) * 1000, percentile(paths["direct"], 0.99) * 1000
        for path, values in paths.items():
            p50, p99 = percentile(values, 0.5) * 1000, percentile(values, 0.99) * 1000
            added = "" if path == "direct" else f"{p50 - d50:+.2f} | {p99 - d99:+.2f} | {p50 / d50:.2f}x"
            lines.append(f"| {case} | {PATHS[path]} | {len(values)} | {p50:.2f} | {p99:.2f} | {added or '| |'} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=300, help="calls per case per round and path")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--session-calls", type=int, default=20, help="calls per Sentrail session")
    parser.add_argument("--out", type=Path, default=None, help="write the markdown table here too")
    args = parser.parse_args()
    times = asyncio.run(run(args.calls, args.rounds, args.session_calls))
    text = report(times, args)
    print(text)
    if args.out is not None:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
