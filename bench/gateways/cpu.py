"""CPU per request of Sentrail's app, in process, without the HTTP server: for deciding what to change.

Builds the app as `sentrail serve` would (one configuration of gateways.py: its settings, its policies,
its embedded Redis) in front of the stub (another process), and calls the ASGI app itself, one request
after another (concurrency 1), with the benchmark's prompt: JSON and streamed. Prints the process's CPU
time (`time.process_time`) per request over `--requests` requests of each kind, taking the median of
`--rounds` rounds, and the embedded Redis's CPU per request apart. uvicorn's protocol and the sockets
to the client are not in it (they are the same for every variant); everything from the middleware down,
the engine client's socket to the stub included, is.

    .venv/bin/python bench/gateways/cpu.py [--config default] [--requests 2000] [--kinds json stream]
                                           [--profile json|stream [--callers REGEX]]

It also counts the garbage collector's runs per request. `--profile` runs cProfile over one kind instead
and prints own time per package (or file of this repository), then the functions with the most own and
cumulative time (cProfile inflates code made of many small calls: compare its figures with each other).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = str(Path(__file__).resolve().parent)
while HERE in sys.path:  # profile.py next to this file is not the standard library's (cProfile imports it)
    sys.path.remove(HERE)
import cProfile  # noqa: E402
import pstats  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, HERE)

import gateways as gw  # noqa: E402
import uvloop  # noqa: E402
import yaml  # noqa: E402
from run import PROMPT, free_port, tree_cpu_s  # noqa: E402

from gateway.http.app import create_app  # noqa: E402
from gateway.observability import configure_logging  # noqa: E402
from gateway.settings import load_settings  # noqa: E402


def request_scope(body: bytes) -> dict[str, Any]:
    headers = [(b"host", b"127.0.0.1"), (b"content-type", b"application/json"),
               (b"content-length", str(len(body)).encode())]  # fmt: skip
    return {
        "type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "http_version": "1.1",
        "method": "POST", "scheme": "http", "path": "/v1/chat/completions", "raw_path": b"/v1/chat/completions",
        "root_path": "", "query_string": b"", "headers": headers, "client": ("127.0.0.1", 40000),
        "server": ("127.0.0.1", 8000), "state": {},
    }  # fmt: skip


async def call(app: Any, body: bytes) -> bytes:
    """One request through the ASGI app; the response body (checked by the caller)."""
    sent = False
    complete = asyncio.Event()

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if sent:  # as uvicorn: a disconnect once the response is complete
            await complete.wait()
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    parts: list[bytes] = []
    status = 0

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
        elif message["type"] == "http.response.body":
            parts.append(message.get("body", b""))
            if not message.get("more_body"):
                complete.set()

    async with asyncio.timeout(30):
        await app(request_scope(body), receive, send)
    out = b"".join(parts)
    if status != 200 or b"fox" not in out:
        raise RuntimeError(f"unexpected answer {status}: {out[:300]!r}")
    return out


async def run_kind(app: Any, stream: bool, count: int) -> float:
    body = gw.chat_body(PROMPT, stream)
    started = time.process_time()
    for _ in range(count):
        await call(app, body)
    return (time.process_time() - started) * 1000 / count


async def main_async(args: argparse.Namespace, app: Any) -> None:
    for stream in (False, True):  # warm up: caches, first connections, lazily built state
        await run_kind(app, stream, 200)
    if args.profile:
        stream = args.profile == "stream"
        profiler = cProfile.Profile()
        profiler.enable()
        per = await run_kind(app, stream, args.requests)
        profiler.disable()
        print(f"{args.profile}: {per:.3f} CPU ms per request under cProfile (inflated)\n")
        print(by_package(pstats.Stats(profiler), args.requests))
        stats = pstats.Stats(profiler).strip_dirs()
        stats.sort_stats("tottime").print_stats(args.top)
        stats.sort_stats("cumulative").print_stats(args.top)
        if args.callers:
            stats.print_callers(args.callers)
        return
    redis_pid = redis_child()
    collections = gc_timer()
    results: dict[str, list[float]] = {"json": [], "stream": []}
    redis: dict[str, list[float]] = {"json": [], "stream": []}
    for _ in range(args.rounds):
        for kind in args.kinds:
            before = tree_cpu_s(redis_pid) if redis_pid else 0.0
            results[kind].append(await run_kind(app, kind == "stream", args.requests))
            if redis_pid:
                redis[kind].append((tree_cpu_s(redis_pid) - before) * 1000 / args.requests)
    count = args.rounds * args.requests * len(args.kinds)
    print(
        "garbage collections per request (generation: count, µs): "
        + ", ".join(f"{g}: {n / count:.2f}, {t * 1e6 / count:.1f}" for g, (n, t) in sorted(collections.items()))
    )
    for kind in args.kinds:
        values = results[kind]
        print(f"{kind:6} {statistics.median(values):.3f} CPU ms per request in the gateway process "
              f"(rounds: {', '.join(f'{v:.3f}' for v in values)}); embedded Redis "
              f"{statistics.median(redis[kind]):.3f}")  # fmt: skip


def by_package(stats: pstats.Stats, count: int) -> str:
    """Own time per package (site-packages/<name>) or per file of this repository, in µs per request."""
    root = str(gw.ROOT) + "/"
    totals: dict[str, float] = {}
    for (filename, _, name), (_, _, tottime, _, _) in stats.stats.items():  # type: ignore[attr-defined]
        if "site-packages/" in filename:
            key = filename.split("site-packages/", 1)[1].split("/", 1)[0]
        elif filename.startswith(root):
            key = filename[len(root) :]
        elif filename == "~":
            key = name if "method" in name else "builtins"
        else:
            key = "stdlib " + Path(filename).name
        totals[key] = totals.get(key, 0.0) + tottime
    rows = sorted(totals.items(), key=lambda kv: -kv[1])
    whole = sum(totals.values())
    lines = [f"own time by package or file, µs per request (cProfile; whole {whole * 1e6 / count:.0f})"]
    lines += [f"{t * 1e6 / count:8.1f}  {k}" for k, t in rows[:40]]
    return "\n".join(lines) + "\n"


def gc_timer() -> dict[int, list[float]]:
    """Counts and times the garbage collector's runs from now on: generation -> [runs, seconds]."""
    import gc

    totals: dict[int, list[float]] = {}
    started = [0.0]

    def callback(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            started[0] = time.process_time()
        else:
            entry = totals.setdefault(info["generation"], [0, 0.0])
            entry[0] += 1
            entry[1] += time.process_time() - started[0]

    gc.callbacks.append(callback)
    return totals


def redis_child() -> int | None:
    for entry in Path(f"/proc/{os.getpid()}/task").iterdir():
        children = (entry / "children").read_text().split()
        if children:
            return int(children[-1])
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", choices=["none", "regex", "default"], default="default")
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--profile", choices=["json", "stream"])
    parser.add_argument("--kinds", nargs="+", choices=["json", "stream"], default=["json", "stream"])
    parser.add_argument("--top", type=int, default=45)
    parser.add_argument("--callers", help="with --profile: who calls the functions matching this")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="sentrail-cpu-"))
    stub_port = free_port()
    stub = subprocess.Popen([sys.executable, str(gw.HERE / "stub.py"), "--port", str(stub_port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)  # fmt: skip
    try:
        gateway = {g.key: g for g in gw.sentrail_gateways([free_port()] * 3, f"http://127.0.0.1:{stub_port}", workdir)}
        config = yaml.safe_load(Path(gateway[f"sentrail-{args.config}"].command[-1]).read_text())
        settings = load_settings(environ={}, **{k: v for k, v in config.items() if k not in ("host", "port")})
        configure_logging(settings.log_format, settings.log_level)
        app = create_app(settings)
        wait_for_port(stub_port)
        uvloop.run(with_lifespan(app, main_async(args, app)))  # the loop uvicorn runs the gateway on
    finally:
        stub.terminate()


async def with_lifespan(app: Any, body: Any) -> None:
    async with app.lifespan():
        await body


def wait_for_port(port: int, timeout_s: float = 20) -> None:
    import socket

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("the stub did not start")


if __name__ == "__main__":
    main()
