"""Latency a gateway adds, side by side: Sentrail, LiteLLM proxy and NeMo Guardrails server, one run,
with a reference floor (a bare ASGI proxy on the same Python HTTP stack: what no Python gateway beats).

Every gateway fronts the same fast stub upstream (stub.py) and gets the same load (loadgen.py):
closed-loop concurrency 1 (the sequential added latency) and open-loop fixed request rates, plain JSON
and streaming. The same load sent straight to the stub is the baseline; "added" = gateway percentile
minus direct percentile at the same rate and mode. On 2+ cores the stub and this load generator share
the first core and the gateway under test (with all its children) gets the second one alone. Figures only.

    .venv/bin/python bench/gateways/run.py                     # everything (about 30 min)
    .venv/bin/python bench/gateways/run.py --quick             # 2 s per point, rates 100 500 1000
    .venv/bin/python bench/gateways/run.py --gateways sentrail-none,litellm --rates 300 1000 --duration 3

Creates bench/.venvs/{litellm,nemo,plot} on first use; writes bench/results/gateways.{md,png,json}.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shlex
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import gateways as gw
import loadgen
import report

PROMPT = (
    "Summarise the following meeting notes in three bullet points. The team reviewed the release plan, "
    "agreed to move the launch by one week, and asked for a new round of load tests on the checkout path."
)
RESULTS = gw.ROOT / "bench" / "results"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ---- the gateway's process tree: CPU time and memory, from /proc ----


def tree_pids(pid: int) -> list[int]:
    pids, stack = [], [pid]
    while stack:
        current = stack.pop()
        pids.append(current)
        try:
            for task in os.listdir(f"/proc/{current}/task"):
                with open(f"/proc/{current}/task/{task}/children") as f:
                    stack.extend(int(child) for child in f.read().split())
        except OSError:
            continue
    return pids


def tree_cpu_s(pid: int) -> float:
    """utime + stime of the process and every live descendant, plus the reaped children's (cutime + cstime)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for index, current in enumerate(tree_pids(pid)):
        try:
            with open(f"/proc/{current}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12]) + (int(fields[13]) + int(fields[14]) if index == 0 else 0)
    return total / ticks


def tree_rss_mb(pid: int) -> float:
    total_kb = 0
    for current in tree_pids(pid):
        try:
            with open(f"/proc/{current}/status") as f:
                total_kb += next((int(line.split()[1]) for line in f if line.startswith("VmRSS:")), 0)
        except OSError:
            continue
    return total_kb / 1024


# ---- measuring one target (the stub itself, or a gateway) ----


async def measure_point(port: int, stream: bool, rate: float | None, duration_s: float, pid: int | None) -> dict:
    """One load point: closed-loop c=1 when `rate` is None, else open loop at `rate`; with the gateway's
    CPU seconds and peak RSS (sampled every 0.2 s) when `pid` is given."""
    data = loadgen.build_request("127.0.0.1", port, "/v1/chat/completions", gw.chat_body(PROMPT, stream))
    peak_rss = 0.0
    done = asyncio.Event()

    async def sample_rss() -> None:
        nonlocal peak_rss
        while pid is not None and not done.is_set():
            peak_rss = max(peak_rss, tree_rss_mb(pid))
            await asyncio.sleep(0.2)

    sampler = asyncio.ensure_future(sample_rss())
    cpu_before = tree_cpu_s(pid) if pid else 0.0
    if rate is None:
        result = await loadgen.closed_loop("127.0.0.1", port, data, stream, duration_s)
    else:
        result = await loadgen.open_loop("127.0.0.1", port, data, stream, rate, duration_s)
    cpu = tree_cpu_s(pid) - cpu_before if pid else 0.0
    done.set()
    await sampler
    point = loadgen.summarize(result)
    point.update(mode="stream" if stream else "json", rate=rate or 0, duration_s=duration_s)
    if pid:
        # per *answered* request: on an overloaded point, requests the client gave up on would dilute it
        point.update(cpu_s_per_1k=1000 * cpu / max(1, point["ok"]), cpu_util=cpu / max(1e-9, result.wall_s),
                     rss_mb=peak_rss)  # fmt: skip
    return point


def overloaded(point: dict) -> bool:
    """Far past what the target sustains: higher rates would only add minutes of timeouts."""
    return point["errors"] > 0.01 * point["n"] or point["achieved_rps"] < 0.9 * point["offered_rps"]


async def measure_target(port: int, args: argparse.Namespace, pid: int | None, label: str) -> list[dict]:
    points = []
    for stream in args.modes:
        point = await measure_point(port, stream, None, args.c1_duration, pid)
        points.append(point)
        print(f"  {label:<18} {point['mode']:<6} c=1       p50 {point['p50_ms']:7.2f} ms  p99 {point['p99_ms']:7.2f} ms"
              f"  {point['achieved_rps']:7.0f} req/s", flush=True)  # fmt: skip
        for rate in args.rates:
            point = await measure_point(port, stream, rate, args.duration, pid)
            points.append(point)
            print(f"  {label:<18} {point['mode']:<6} {rate:>5}/s   p50 {point['p50_ms']:7.2f} ms  p99 "
                  f"{point['p99_ms']:7.2f} ms  achieved {point['achieved_rps']:7.0f}/s  errors {point['errors']}",
                  flush=True)  # fmt: skip
            await asyncio.sleep(0.5)  # let queues drain between points
            if overloaded(point):
                print(f"  {label:<18} {point['mode']:<6} overloaded at {rate}/s: higher rates skipped", flush=True)
                await drain(port)
                break
    return points


def stream_deltas(body: bytes) -> list[str]:
    """The non-empty `content` deltas of an SSE body, in order."""
    deltas = []
    for line in body.split(b"\n"):
        if line.startswith(b"data: {"):
            try:
                event = json.loads(line[6:])
            except ValueError:
                continue
            for choice in event.get("choices") or []:
                if (choice.get("delta") or {}).get("content"):
                    deltas.append(choice["delta"]["content"])
    return deltas


async def sanity(gateway: gw.Gateway, stub_port: int) -> dict:
    """Checks that make the figures mean something: the answer is the stub's (in several content deltas when
    streamed), each request is exactly one upstream call, a configuration with a rail blocks the prompt the
    rail is about, and one with a blocking output rail lets no part of the stub's answer to LEAK_PROMPT out."""
    port = gateway.port
    checks: dict = {}
    _, before = await loadgen.get("127.0.0.1", stub_port, "/stats")
    for stream in (False, True):
        data = loadgen.build_request("127.0.0.1", port, "/v1/chat/completions", gw.chat_body(PROMPT, stream))
        status, body = await loadgen.fetch("127.0.0.1", port, data)
        checks["stream_ok" if stream else "json_ok"] = status == 200 and b"quick" in body and b"fox" in body
        if stream:
            checks["stream_content_deltas"] = len(stream_deltas(body))
        if not checks["stream_ok" if stream else "json_ok"]:
            checks.setdefault("problems", []).append(f"{'stream' if stream else 'json'}: {status} {body[:300]!r}")
    _, after = await loadgen.get("127.0.0.1", stub_port, "/stats")
    checks["upstream_calls_per_request"] = (json.loads(after)["completions"] - json.loads(before)["completions"]) / 2
    data = loadgen.build_request("127.0.0.1", port, "/v1/chat/completions", gw.chat_body(gw.BLOCKED_PROMPT, False))
    status, body = await loadgen.fetch("127.0.0.1", port, data)
    checks["blocks_rail_prompt"] = not (status == 200 and b"fox" in body)
    checks["block_response"] = f"{status} {body[:160].decode(errors='replace')}"
    if gateway.blocks_output:
        data = loadgen.build_request("127.0.0.1", port, "/v1/chat/completions", gw.chat_body(gw.LEAK_PROMPT, True))
        status, body = await loadgen.fetch("127.0.0.1", port, data)
        sent = "".join(stream_deltas(body))
        checks["output_stream_leaks"] = "launch" in sent.lower() or "codes" in sent.lower()
        checks["output_stream_sent"] = sent
        checks["output_block_response"] = f"{status} {body[-300:].decode(errors='replace')}"
    return checks


async def warm_up(port: int) -> None:
    """Closed loop only: an open-loop warm-up would leave a slow gateway with a backlog for the first point."""
    for stream in (False, True):
        data = loadgen.build_request("127.0.0.1", port, "/v1/chat/completions", gw.chat_body(PROMPT, stream))
        await loadgen.closed_loop("127.0.0.1", port, data, stream, 1.5)


async def drain(port: int, timeout_s: float = 90.0) -> None:
    """After an overloaded point the gateway may still work through requests the client gave up on: wait
    until a single request is answered within 0.5 s again, so the next point starts from an idle gateway."""
    data = loadgen.build_request("127.0.0.1", port, "/v1/chat/completions", gw.chat_body(PROMPT, False))
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        started = time.monotonic()
        try:
            await loadgen.fetch("127.0.0.1", port, data, timeout_s=30)
        except (OSError, TimeoutError):
            pass
        if time.monotonic() - started < 0.5:
            return
        await asyncio.sleep(1)


# ---- the run ----


def select(keys: list[str], wanted: str) -> list[str]:
    if wanted == "all":
        return keys
    picked = [k for k in keys if any(k == w or k.startswith(w + "-") for w in wanted.split(","))]
    if not picked:
        sys.exit(f"no gateway matches {wanted!r}; choose from: {', '.join(keys)}")
    return picked


async def run(args: argparse.Namespace) -> dict:
    cores = sorted(os.sched_getaffinity(0))
    client_cpus, gateway_cpus = ({cores[0]}, {cores[1]}) if len(cores) >= 2 else (None, None)
    if client_cpus:
        os.sched_setaffinity(0, client_cpus)  # this load generator, and the stub it starts, share this core
    workdir = Path(tempfile.mkdtemp(prefix="gateway-bench-"))
    stub_port = free_port()
    stub_url = f"http://127.0.0.1:{stub_port}"
    stub_cmd = [sys.executable, str(gw.HERE / "stub.py"), "--port", str(stub_port), "--chunks", str(args.chunks),
                "--chunk-interval-ms", str(args.chunk_interval_ms)]  # fmt: skip
    stub = subprocess.Popen(stub_cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # noqa: ASYNC220 (once, before any load)
    all_gateways = [gw.floor_gateway(free_port(), stub_url),
                    *gw.sentrail_gateways([free_port() for _ in range(3)], stub_url, workdir),
                    *gw.litellm_gateways([free_port() for _ in range(2)], stub_url, workdir),
                    *gw.nemo_gateways([free_port() for _ in range(6)], stub_url, workdir)]  # fmt: skip
    chosen = [g for g in all_gateways if g.key in select([g.key for g in all_gateways], args.gateways)]
    out: dict = {
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "machine": machine(), "argv": sys.argv,
        "pinning": (f"stub + load generator on core {cores[0]}, gateway process tree on core {cores[1]}"
                    if client_cpus else "not pinned (one core)"),
        "args": {k: v for k, v in vars(args).items()}, "stub": shlex.join(stub_cmd), "gateways": [],
        "versions": versions({g.product for g in chosen}),
    }  # fmt: skip
    try:
        for _ in range(50):  # the stub is up when its port answers
            try:
                await loadgen.get("127.0.0.1", stub_port, "/health")
                break
            except OSError:
                await asyncio.sleep(0.1)
        await warm_up(stub_port)
        print("direct to the stub:", flush=True)
        out["direct"] = await measure_target(stub_port, args, None, "direct")
        for gateway in chosen:
            print(f"{gateway.key}: {gateway.product}, {gateway.config}", flush=True)
            entry = {"key": gateway.key, "product": gateway.product, "config": gateway.config,
                     "command": shlex.join(gateway.command), "env": gateway.env}  # fmt: skip
            if gateway.config_text:
                entry["config_file"] = gateway.config_text
            out["gateways"].append(entry)
            try:
                started = time.monotonic()
                gateway.start(gateway_cpus, workdir)
                gateway.wait_ready()
                entry["startup_s"] = time.monotonic() - started
                entry["sanity"] = await sanity(gateway, stub_port)
                print(f"  ready in {entry['startup_s']:.1f} s; checks: {entry['sanity']}", flush=True)
                await warm_up(gateway.port)
                assert gateway.process is not None
                entry["idle_rss_mb"] = tree_rss_mb(gateway.process.pid)
                entry["points"] = await measure_target(gateway.port, args, gateway.process.pid, gateway.key)
            except Exception as exc:  # a gateway that fails is reported as such; the others still run
                entry["failed"] = f"{type(exc).__name__}: {exc}"
                print(f"  FAILED: {entry['failed']}", flush=True)
            finally:
                gateway.stop()
            if gateway.log_path and gateway.log_path.exists():
                entry["log_tail"] = gateway.log_path.read_text(errors="replace")[-1500:]
    finally:
        stub.terminate()
        stub.wait(timeout=10)
    return out


def machine() -> str:
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.machine())  # fmt: skip
    return f"{model}, {os.cpu_count()} cores, Linux {platform.release()}, Python {platform.python_version()}"


def versions(products: set[str]) -> dict[str, str]:
    found = {"Sentrail": gw.sentrail_version()}
    if "LiteLLM proxy" in products:
        found["LiteLLM"] = gw.package_version(gw.venv_python("litellm"), "litellm")
    if "NeMo Guardrails server" in products:
        found["NeMo Guardrails"] = gw.package_version(gw.venv_python("nemo"), "nemoguardrails")
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--gateways",
        default="all",
        help="comma-separated keys or prefixes: sentrail, litellm, nemo, nemo-iorails, sentrail-regex",
    )
    parser.add_argument("--rates", type=int, nargs="+", default=[100, 300, 500, 1000, 2000, 3000])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of load per open-loop point")
    parser.add_argument("--c1-duration", type=float, default=5.0, help="seconds of the concurrency-1 point")
    parser.add_argument("--modes", default="json,stream", help="json, stream, or both")
    parser.add_argument("--bound-ms", type=float, default=10.0, help="added p99 bound for the sustained rate")
    parser.add_argument("--chunks", type=int, default=16, help="content chunks (tokens) per stub answer")
    parser.add_argument("--chunk-interval-ms", type=float, default=0.0,
                        help="the stub's delay between stream chunks (0: all at once; 20: 50 tokens/s)")  # fmt: skip
    parser.add_argument("--quick", action="store_true", help="2 s per point (1 s at c=1), rates 100 500 1000")
    parser.add_argument("--out", default=str(RESULTS / "gateways"), help="output path without extension")
    parser.add_argument("--no-plot", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.duration, args.c1_duration = 2.0, 1.0
        if args.rates == parser.get_default("rates"):
            args.rates = [100, 500, 1000]
    args.modes = [mode == "stream" for mode in args.modes.split(",")]
    products = {key.split("-")[0] for key in (["sentrail", "litellm", "nemo"] if args.gateways == "all"
                                               else args.gateways.split(","))}  # fmt: skip
    for name in ["litellm", "nemo"] + ([] if args.no_plot else ["plot"]):
        if name in products or name == "plot":
            gw.ensure_venv(name)
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    results = asyncio.run(run(args))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(results, indent=1, default=str))
    markdown = report.markdown(results, args.bound_ms, out.with_suffix(".png").name)
    out.with_suffix(".md").write_text(markdown)
    print(markdown)
    if not args.no_plot:
        plot = [str(gw.venv_python("plot")), str(gw.HERE / "report.py"), str(out.with_suffix(".json")),
                str(out.with_suffix(".png")), str(args.bound_ms)]  # fmt: skip
        subprocess.run(plot, check=True)
    print(f"wrote {out.with_suffix('.md')}, {out.with_suffix('.png')}, {out.with_suffix('.json')}")


if __name__ == "__main__":
    main()
