"""Where Sentrail's time goes per request: py-spy samples the gateway under closed-loop load on the stub.

Starts the stub and Sentrail (one configuration of gateways.py), pins the gateway to its own core, drives
`--seconds` of closed-loop load at concurrency `--concurrency` (JSON, or `--stream`), with py-spy
recording the gateway; prints requests/s, CPU ms per request, read and write system calls per request
(/proc/PID/io: a write to a socket is also a wakeup of its reader), and the functions with the most samples
(inclusive, and own time), and writes the collapsed stacks next to the results.

    .venv/bin/python bench/gateways/profile.py [--config none|regex|default] [--stream] [--seconds 15]

py-spy is installed into bench/.venvs/profile on first use.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import gateways as gw
import loadgen
from run import PROMPT, free_port, tree_cpu_s

RESULTS = gw.ROOT / "bench" / "results"


def py_spy() -> Path:
    return gw.ensure_venv("profile").parent / "py-spy"


async def load(port: int, stream: bool, seconds: float, concurrency: int) -> int:
    data = loadgen.build_request("127.0.0.1", port, "/v1/chat/completions", gw.chat_body(PROMPT, stream))
    results = await asyncio.gather(
        *(loadgen.closed_loop("127.0.0.1", port, data, stream, seconds) for _ in range(concurrency))
    )
    return sum(sum(1 for s in r.samples if s.status == 200) for r in results)


def top(collapsed: Path, count: int) -> str:
    """Inclusive and own sample counts per function from py-spy's collapsed stacks."""
    inclusive: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    total = 0
    for line in collapsed.read_text().splitlines():
        stack, _, samples = line.rpartition(" ")
        n = int(samples)
        total += n
        frames = [
            f.split(" (")[0] + " (" + f.split(" (")[-1].split(":")[0].rsplit("/", 1)[-1] for f in stack.split(";")
        ]
        for frame in set(frames):
            inclusive[frame] += n
        own[frames[-1]] += n
    lines = [
        f"{total} samples",
        "",
        "inclusive %  function",
        *(f"{100 * n / total:10.1f}  {f}" for f, n in inclusive.most_common(count)),
    ]
    lines += ["", "own %       function", *(f"{100 * n / total:10.1f}  {f}" for f, n in own.most_common(count))]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", choices=["none", "regex", "default"], default="none")
    parser.add_argument("--stream", action="store_true")
    parser.add_argument("--seconds", type=float, default=15)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--top", type=int, default=40)
    parser.add_argument("--no-spy", action="store_true", help="measure only (req/s, CPU per request): for A/B runs")
    args = parser.parse_args()

    cores = sorted(os.sched_getaffinity(0))
    gateway_cpus = {cores[-1]} if len(cores) > 1 else None
    if gateway_cpus:
        os.sched_setaffinity(0, set(cores[:-1]))  # this process and the stub on the rest
    workdir = Path(tempfile.mkdtemp(prefix="sentrail-profile-"))
    stub_port, port = free_port(), free_port()
    stub = subprocess.Popen([sys.executable, str(gw.HERE / "stub.py"), "--port", str(stub_port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)  # fmt: skip
    gateway = {g.key: g for g in gw.sentrail_gateways([port] * 3, f"http://127.0.0.1:{stub_port}", workdir)}[
        f"sentrail-{args.config}"
    ]
    spy = py_spy()
    try:
        gateway.start(gateway_cpus, workdir)
        gateway.wait_ready()
        asyncio.run(load(port, args.stream, 2, args.concurrency))  # warm up
        collapsed = RESULTS / f"profile-sentrail-{args.config}{'-stream' if args.stream else ''}.txt"
        recorder = None
        if not args.no_spy:
            recorder = subprocess.Popen([str(spy), "record", "--pid", str(gateway.process.pid), "--format", "raw",
                                         "--rate", "250", "--output", str(collapsed), "--nonblocking"],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
            time.sleep(1)
        cpu_before, own_before = tree_cpu_s(gateway.process.pid), process_cpu_s(gateway.process.pid)
        io_before = syscalls(gateway.process.pid)
        started = time.monotonic()
        answered = asyncio.run(load(port, args.stream, args.seconds, args.concurrency))
        wall = time.monotonic() - started
        cpu = tree_cpu_s(gateway.process.pid) - cpu_before
        own = process_cpu_s(gateway.process.pid) - own_before
        io = {k: v - io_before[k] for k, v in syscalls(gateway.process.pid).items()}
        if recorder is not None:
            recorder.send_signal(2)  # SIGINT: py-spy writes its output and exits
            recorder.wait(timeout=60)
    finally:
        gateway.stop()
        stub.terminate()
    per = 1000 / max(answered, 1)
    print(f"sentrail-{args.config} {'stream' if args.stream else 'json'} c={args.concurrency}: "
          f"{answered / wall:.0f} req/s, {cpu * per:.3f} CPU ms per request "
          f"(gateway process {own * per:.3f}, its children {(cpu - own) * per:.3f})"
          f"{'' if args.no_spy else ' (py-spy sampling adds some)'}; per request, the gateway process made "
          f"{io['syscr'] * per / 1000:.2f} read and {io['syscw'] * per / 1000:.2f} write system calls\n")  # fmt: skip
    if not args.no_spy:
        print(top(collapsed, args.top))


def syscalls(pid: int) -> dict[str, int]:
    """The process's read and write system calls so far (/proc/PID/io: syscr, syscw; sockets included)."""
    with open(f"/proc/{pid}/io") as f:
        fields = dict(line.split(": ") for line in f.read().splitlines())
    return {"syscr": int(fields["syscr"]), "syscw": int(fields["syscw"])}


def process_cpu_s(pid: int) -> float:
    """utime + stime of the process itself (not its children)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


if __name__ == "__main__":
    main()
