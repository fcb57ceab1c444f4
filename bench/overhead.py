"""Sentrail's overhead over the engine it fronts, side by side in one run.

Starts `sentrail serve` (which starts its managed vLLM engine on a known port), then sends the same
streaming chat requests directly to vLLM and through Sentrail, alternating rounds so both see the same
machine state, at concurrency 1 and 16. Prints p50/p99 latency, p50/p99 time to first token and
output tokens/s for both, and the ratio Sentrail/direct. Figures only: nothing here asserts.

    .venv/bin/python bench/overhead.py [--requests 48] [--max-tokens 64] [--rounds 2] [--pin]

`--pin` (needs 2+ cores) runs the engine on the last core and the gateway and this load generator on
the others, so that the gateway's work never takes CPU from the engine: at saturation the engine's
core is the bottleneck and the ratio of output tokens/s is the gateway's cost in throughput.

`--baseline REV` adds a gateway running that git revision's code (its packages and shipped policies, extracted
with git archive) in front of the same engine: before and after a change, in the same run.

`--variants windowed no-output-rails` also starts one gateway per variant in front of the same engine
(`kind: remote`), with a copy of `policies/` changed as named, and sends them the same load in the same
rounds: `windowed` streams with the fixed-window output filter (`streaming.frontier: false`), the filter
before the frontier one; `no-output-rails` has no output stage (what the output filter costs in all).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.baseline import extract  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MODEL = "SmolLM2-135M-Instruct"
PROMPTS = [
    "Explain what a firewall does.",
    "Write a haiku about the sea.",
    "List three uses of a hash function.",
    "Describe a cat to someone who has never seen one.",
    "What is the capital of France, and why is it famous?",
    "Give two tips for writing clear code.",
]


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def one(client: httpx.AsyncClient, url: str, prompt: str, max_tokens: int) -> tuple[float, float, int]:
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    started = time.perf_counter()
    ttft = None
    tokens = 0
    async with client.stream("POST", url, json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[6:])
            if ttft is None and event.get("choices") and event["choices"][0]["delta"].get("content"):
                ttft = time.perf_counter() - started
            if event.get("usage"):
                tokens = event["usage"]["completion_tokens"]
    total = time.perf_counter() - started
    return total, ttft if ttft is not None else total, tokens


async def run_load(url: str, concurrency: int, requests: int, max_tokens: int) -> dict[str, float]:
    results: list[tuple[float, float, int]] = []
    queue = list(range(requests))
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=120, limits=limits) as client:

        async def worker() -> None:
            while queue:
                index = queue.pop()
                results.append(await one(client, url, PROMPTS[index % len(PROMPTS)], max_tokens))

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - started
    return summarize(results, wall)


def summarize(results: list[tuple[float, float, int]], wall: float) -> dict[str, float]:
    latencies = sorted(r[0] for r in results)
    ttfts = sorted(r[1] for r in results)
    return {
        "p50_ms": 1000 * statistics.median(latencies),
        "p99_ms": 1000 * percentile(latencies, 0.99),
        "ttft_p50_ms": 1000 * statistics.median(ttfts),
        "ttft_p99_ms": 1000 * percentile(ttfts, 0.99),
        "tok_s": sum(r[2] for r in results) / wall,
        "n": len(results),
    }


def percentile(values: list[float], q: float) -> float:
    return values[min(len(values) - 1, round(q * (len(values) - 1)))]


def merge(runs: list[dict[str, float]]) -> dict[str, float]:
    """Mean over rounds of each figure (rounds alternate direct/gateway)."""
    return {key: statistics.fmean(run[key] for run in runs) for key in runs[0]}


VARIANTS = ("windowed", "no-output-rails")


def start_gateway(port: int, engine_port: int, engine_cpus: str | None, variant: str = "",
                  code: Path = ROOT) -> subprocess.Popen[bytes]:  # fmt: skip
    """Sentrail with its managed engine; a variant fronts that engine (`kind: remote`) with changed policies, or
    with the shipped policies and another revision's code (`code`: a folder with its packages)."""
    folder = Path(tempfile.mkdtemp())
    config = folder / "bench.yaml"
    pin = f", cpus: '{engine_cpus}'" if engine_cpus else ""
    engine = f"{{kind: vllm, port: {engine_port}, max_concurrency: 64{pin}}}"
    policies = ""
    if variant:
        engine = f"{{kind: remote, url: 'http://127.0.0.1:{engine_port}', max_concurrency: 64}}"
        shutil.copytree(code / "policies", folder / "policies")
        rails_file = folder / "policies" / "rails.yaml"
        rails = yaml.safe_load(rails_file.read_text())
        if variant == "windowed":
            rails.setdefault("streaming", {})["frontier"] = False
        elif variant == "no-output-rails":
            rails["stages"].pop("output", None)
        rails_file.write_text(yaml.safe_dump(rails, sort_keys=False))
        policies = f"policies_dir: {folder / 'policies'}\ndata_dir: {folder / 'data'}\n"
    config.write_text(f"port: {port}\nlog_level: warning\ndev_mode: true\n{policies}models:\n  - id: {MODEL}\n"
                      f"    engines:\n      - {engine}\n")  # fmt: skip
    env = {**os.environ, "SENTRAIL_LOG_FORMAT": "json", "PYTHONPATH": str(code)}
    command = [sys.executable, "-m", "gateway.cli", "serve", "--config", str(config)]
    return subprocess.Popen(command, cwd=code, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def wait_ready(url: str, process: subprocess.Popen[bytes], timeout_s: float = 600) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            sys.exit(f"sentrail exited with code {process.returncode}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    sys.exit("sentrail did not become ready")


def table(names: list[str], rows: list[tuple[int, list[dict[str, float]]]]) -> str:
    """One row per concurrency and figure: direct, then each gateway with its ratio to direct."""
    keys = [("p50_ms", "p50 latency ms"), ("p99_ms", "p99 latency ms"), ("ttft_p50_ms", "p50 TTFT ms"),
            ("ttft_p99_ms", "p99 TTFT ms"), ("tok_s", "output tok/s")]  # fmt: skip
    head = "| concurrency | figure | direct vLLM | " + " | ".join(f"{n} | ratio" for n in names) + " |"
    lines = [head, "|---|---|---|" + "---|---|" * len(names)]
    for concurrency, (direct, *gateways) in rows:
        for key, label in keys:
            cells = " | ".join(f"{g[key]:.1f} | {g[key] / direct[key]:.3f}" for g in gateways)
            lines.append(f"| {concurrency} | {label} | {direct[key]:.1f} | {cells} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=48, help="requests per round and mode")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--pin", action="store_true", help="engine on the last core, everything else on the rest")
    parser.add_argument("--variants", nargs="*", default=[], choices=VARIANTS, help="more gateways, same engine")
    parser.add_argument("--out", help="results file name under bench/results (default: overhead[_pinned].md)")
    parser.add_argument("--baseline", help="also a gateway running this git revision's code (shipped policies)")
    args = parser.parse_args()

    cores = sorted(os.sched_getaffinity(0))
    engine_cpus = None
    if args.pin:
        if len(cores) < 2:
            sys.exit("--pin needs at least 2 cores")
        engine_cpus = str(cores[-1])
        os.sched_setaffinity(0, cores[:-1])  # the gateway (a child of this process) inherits it
    port, engine_port = free_port(), free_port()
    processes = [start_gateway(port, engine_port, engine_cpus)]
    ports = [port]
    try:
        wait_ready(f"http://127.0.0.1:{port}/v1/health/ready", processes[0])
        for variant in args.variants:
            ports.append(free_port())
            processes.append(start_gateway(ports[-1], engine_port, None, variant))
            wait_ready(f"http://127.0.0.1:{ports[-1]}/v1/health/ready", processes[-1])
        if args.baseline:
            code = Path(tempfile.mkdtemp())
            commit = extract(args.baseline, ["gateway", "rails", "engines", "protocol", "policies"], code)
            ports.append(free_port())
            processes.append(start_gateway(ports[-1], engine_port, None, "baseline", code))
            wait_ready(f"http://127.0.0.1:{ports[-1]}/v1/health/ready", processes[-1])
        urls = [f"http://127.0.0.1:{p}/v1/chat/completions" for p in [engine_port, *ports]]
        asyncio.run(run_load(urls[0], 4, 8, args.max_tokens))  # warm-up
        rows = []
        for concurrency in args.concurrency:
            runs: list[list[dict[str, float]]] = [[] for _ in urls]
            for _ in range(args.rounds):  # each round: direct, then every gateway, the same load
                for url, done in zip(urls, runs, strict=True):
                    done.append(asyncio.run(run_load(url, concurrency, args.requests, args.max_tokens)))
            rows.append((concurrency, [merge(done) for done in runs]))
    finally:
        for process in reversed(processes):
            process.terminate()
            process.wait(timeout=60)
    names = ["through Sentrail", *(f"Sentrail, {variant}" for variant in args.variants)]
    names += [f"Sentrail at {commit}"] if args.baseline else []
    report = (
        f"Streaming chat, {args.requests} requests x {args.rounds} rounds per mode, max_tokens={args.max_tokens}, "
        f"temperature 0, model {MODEL} on vLLM CPU (eager); "
        + (
            f"engine pinned to core {engine_cpus}, gateway and client on cores {','.join(map(str, cores[:-1]))}.\n\n"
            if engine_cpus
            else f"client, gateway and engine share {len(cores)} cores.\n\n"
        )
        + table(names, rows)
    )
    print(report)
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    (out / (args.out or ("overhead_pinned.md" if args.pin else "overhead.md"))).write_text(report + "\n")


if __name__ == "__main__":
    main()
