"""Session affinity and time to first token for multi-step agent sessions, side by side in one run.

Starts `sentrail serve` with two managed vLLM engines of the embedded model (pinned to cores 0 and 1),
then runs S concurrent sessions of K sequential steps each, in two modes interleaved per round (a, b,
a, b): (a) with `X-Session-Id`, so a session's steps stay on one engine whose prefix cache holds its
history; (b) without one, so every step is routed as a new session. Each step resends the whole
conversation: a ~1500-token system prompt, then per step a user turn with ~200 tokens of tool output
and the previous answers. Prompts start with "Run r<round><mode>-s<session>." so no prefix is shared
across sessions, rounds or modes. Reports p50/p99 TTFT of steps >= 2, p50 TTFT of step 1, mean total
latency and the engines' prefix cache hits/queries per mode. Figures only: nothing here asserts.

    .venv/bin/python bench/affinity.py [--sessions 6] [--steps 8] [--rounds 2]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from overhead import free_port, percentile, wait_ready

ROOT = Path(__file__).resolve().parents[1]
MODEL = "SmolLM2-135M-Instruct"
POLICY = (
    "Policy {n}: the agent works in the customer support workspace. It reads the ticket, checks the account "
    "history, and drafts a reply that is short, polite and factual. It never promises refunds above the limit set "
    "by the billing team, it cites the knowledge base article it relied on, and it escalates to a human when the "
    "customer is upset, when the request involves legal matters, or when the account shows signs of fraud. "
)
SYSTEM = "".join(POLICY.format(n=n) for n in range(1, 18))  # ~1500 tokens
MODES = {"a": "affinity", "b": "no affinity"}


def user_turn(step: int) -> str:
    records = " ".join(
        f"Record {step}.{k}: order {1000 * step + k} shipped from warehouse {k % 7} on day {step * k % 28 + 1}, ok."
        for k in range(1, 9)
    )
    return f"Step {step}: the lookup tool returned: {records} Summarise this step in one sentence."


async def one_step(
    client: httpx.AsyncClient, url: str, messages: list[dict], headers: dict
) -> tuple[float, float, str]:
    body = {"model": MODEL, "messages": messages, "max_tokens": 16, "temperature": 0, "stream": True}
    started = time.perf_counter()
    ttft, parts = None, []
    async with client.stream("POST", url, json=body, headers=headers) as response:
        if response.status_code != 200:
            raise RuntimeError(f"step failed: {response.status_code} {(await response.aread()).decode()[:300]}")
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[6:])
            if event.get("error"):
                raise RuntimeError(f"stream failed: {event['error']}")
            content = event["choices"][0]["delta"].get("content") if event.get("choices") else None
            if content:
                ttft = ttft if ttft is not None else time.perf_counter() - started
                parts.append(content)
    total = time.perf_counter() - started
    return ttft if ttft is not None else total, total, "".join(parts)


async def session(client: httpx.AsyncClient, url: str, tag: str, steps: int, affinity: bool) -> list[tuple]:
    headers = {"X-Session-Id": f"bench-{tag}"} if affinity else {}
    messages: list[dict] = [{"role": "system", "content": f"Run {tag}. {SYSTEM}"}]
    records = []
    for step in range(1, steps + 1):
        messages.append({"role": "user", "content": user_turn(step)})
        ttft, total, answer = await one_step(client, url, messages, headers)
        messages.append({"role": "assistant", "content": answer or "ok"})
        records.append((step, ttft, total))
    return records


def engine_counters(ports: list[int]) -> list[dict[str, float]]:
    """Per engine: prefix cache hits and queries (tokens) and finished requests, from vLLM's /metrics."""
    wanted = {"vllm:prefix_cache_hits_total": "hits", "vllm:prefix_cache_queries_total": "queries",
              "vllm:request_success_total": "requests"}  # fmt: skip
    counters = []
    for port in ports:
        totals = dict.fromkeys(wanted.values(), 0.0)
        for line in httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text.splitlines():
            name = line.split("{")[0].split(" ")[0]
            if name in wanted:
                totals[wanted[name]] += float(line.rsplit(" ", 1)[1])
        counters.append(totals)
    return counters


def run_round(url: str, ports: list[int], tag: str, sessions: int, steps: int, affinity: bool) -> tuple[list, list]:
    async def go() -> list[list[tuple]]:
        async with httpx.AsyncClient(timeout=300, limits=httpx.Limits(max_connections=sessions)) as client:
            return await asyncio.gather(
                *(session(client, url, f"{tag}-s{s}", steps, affinity) for s in range(sessions))
            )

    before = engine_counters(ports)
    results = asyncio.run(go())
    after = engine_counters(ports)
    deltas = [{key: a[key] - b[key] for key in a} for a, b in zip(after, before, strict=True)]
    return [record for records in results for record in records], deltas


def vllm_pids() -> set[str]:
    """Live (not zombie) vLLM servers and their EngineCore/Worker children (renamed VLLM::...)."""
    ps = subprocess.run(["ps", "-eo", "pid=,stat=,args="], capture_output=True, text=True).stdout.splitlines()
    rows = [line.split(None, 2) for line in ps]
    return {r[0] for r in rows if len(r) == 3 and "Z" not in r[1] and ("vllm.entrypoints" in r[2] or "VLLM::" in r[2])}


def start_gateway(port: int, engine_ports: list[int], data_dir: str) -> subprocess.Popen[bytes]:
    engines = "".join(f"      - {{kind: vllm, port: {p}, cpus: \"{i}\", max_concurrency: 8}}\n"
                      for i, p in enumerate(engine_ports))  # fmt: skip
    config = Path(data_dir) / "bench.yaml"
    config.write_text(f"port: {port}\nlog_level: warning\ndev_mode: true\ndata_dir: {data_dir}\n"
                      f"models:\n  - id: {MODEL}\n    engines:\n{engines}")  # fmt: skip
    command = [sys.executable, "-m", "gateway.cli", "serve", "--config", str(config)]
    with open(Path(data_dir) / "gateway.log", "wb") as log:  # warnings and errors, for a failed run
        return subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)


def figures(records: list[tuple], deltas: list[list[dict[str, float]]]) -> dict[str, float]:
    later = sorted(r[1] for r in records if r[0] >= 2)
    hits = sum(d["hits"] for run in deltas for d in run)
    queries = sum(d["queries"] for run in deltas for d in run)
    split = [sum(run[i]["requests"] for run in deltas) for i in range(len(deltas[0]))]
    return {
        "ttft_p50_ms": 1000 * statistics.median(later),
        "ttft_p99_ms": 1000 * percentile(later, 0.99),
        "ttft1_p50_ms": 1000 * statistics.median(r[1] for r in records if r[0] == 1),
        "total_mean_ms": 1000 * statistics.fmean(r[2] for r in records),
        "hit_rate": hits / queries if queries else float("nan"),
        "hits": hits,
        "queries": queries,
        "split": "/".join(f"{n:.0f}" for n in split),
    }


def table(a: dict, b: dict) -> str:
    rows = [("ttft_p50_ms", "p50 TTFT ms, steps >= 2"), ("ttft_p99_ms", "p99 TTFT ms, steps >= 2"),
            ("ttft1_p50_ms", "p50 TTFT ms, step 1"), ("total_mean_ms", "mean total latency ms"),
            ("hit_rate", "prefix cache hit rate (tokens)")]  # fmt: skip
    lines = ["| figure | affinity | no affinity | ratio |", "|---|---|---|---|"]
    for key, label in rows:
        fmt = ".3f" if key == "hit_rate" else ".1f"
        lines.append(f"| {label} | {a[key]:{fmt}} | {b[key]:{fmt}} | {a[key] / b[key]:.3f} |")
    lines.append(f"| prefix cache hits / queries (tokens) | {a['hits']:.0f} / {a['queries']:.0f} | "
                 f"{b['hits']:.0f} / {b['queries']:.0f} | |")  # fmt: skip
    lines.append(f"| requests per engine (0/1) | {a['split']} | {b['split']} | |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sessions", type=int, default=6, help="concurrent sessions per round")
    parser.add_argument("--steps", type=int, default=8, help="sequential steps per session")
    parser.add_argument("--rounds", type=int, default=2, help="rounds per mode (interleaved a, b, a, b)")
    args = parser.parse_args()

    started, vllm_before = time.monotonic(), vllm_pids()
    port, engine_ports = free_port(), [free_port(), free_port()]
    data_dir = tempfile.mkdtemp(prefix="sentrail-affinity-")
    process = start_gateway(port, engine_ports, data_dir)
    records: dict[str, list] = {"a": [], "b": []}
    deltas: dict[str, list] = {"a": [], "b": []}
    try:
        wait_ready(f"http://127.0.0.1:{port}/v1/health/ready", process)
        url = f"http://127.0.0.1:{port}/v1/chat/completions"
        for engine_port in engine_ports:  # warm-up, straight to each engine
            body = {"model": MODEL, "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 4}
            httpx.post(f"http://127.0.0.1:{engine_port}/v1/chat/completions", json=body, timeout=300)
        for r in range(1, args.rounds + 1):
            for mode in MODES:
                got, delta = run_round(url, engine_ports, f"r{r}{mode}", args.sessions, args.steps, mode == "a")
                records[mode] += got
                deltas[mode].append(delta)
                print(f"round {r} {MODES[mode]}: {time.monotonic() - started:.0f} s", file=sys.stderr)
    except BaseException:
        print(f"failed; the gateway's log: {data_dir}/gateway.log", file=sys.stderr)
        raise
    finally:
        process.terminate()
        process.wait(timeout=300)  # drain, then each engine stops (freeing ~3 GB can be slow)
    for _ in range(30):  # engines' workers may take a few seconds more to exit
        if not (left := sorted(vllm_pids() - vllm_before)):
            break
        time.sleep(1)
    elapsed = time.monotonic() - started
    report = (
        f"`{' '.join(['.venv/bin/python', 'bench/affinity.py', *sys.argv[1:]])}` on "
        f"{datetime.date.today().isoformat()}, {elapsed:.0f} s in all.\n\n"
        f"{args.sessions} concurrent sessions x {args.steps} sequential steps x {args.rounds} rounds per mode "
        f"(a, b, a, b), streaming chat, max_tokens=16, temperature 0, model {MODEL} on two vLLM CPU engines "
        f"(eager, max_concurrency 8) pinned to cores 0 and 1; client and gateway share the same "
        f"{os.cpu_count()} cores. Prompt: ~1500-token system prompt plus ~200 tokens of tool output per step, "
        f"distinct per session. Without a session id every step is routed as a new session.\n\n"
        + table(figures(records["a"], deltas["a"]), figures(records["b"], deltas["b"]))
        + (f"\n\nvLLM processes of this run left after stop: {' '.join(left)}" if left else "")
    )
    print(report)
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    (out / "affinity.md").write_text(report + "\n")


if __name__ == "__main__":
    main()
