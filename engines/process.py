"""Helpers for the child processes Sentrail manages (vLLM servers, the embedded Redis)."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket

PR_SET_PDEATHSIG = 1


def free_port() -> int:
    """A loopback port that is free now (the child binds it right after)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def parse_cpus(spec: str) -> set[int]:
    """`"0"`, `"0-3"`, `"0,2,4-5"` -> CPU ids; ValueError on anything else."""
    cpus: set[int] = set()
    for part in spec.split(","):
        low, _, high = part.strip().partition("-")
        first, last = int(low), int(high or low)
        if first < 0 or last < first:
            raise ValueError(f"bad CPU range {part!r}")
        cpus.update(range(first, last + 1))
    return cpus


def child_setup(cpus: set[int] | None = None):
    """`preexec_fn`: die with the parent, and run on `cpus` only when given."""

    def setup() -> None:
        die_with_parent()
        if cpus:
            os.sched_setaffinity(0, cpus)

    return setup


def die_with_parent() -> None:
    """`preexec_fn` for children on Linux: the child gets SIGTERM when Sentrail dies, even by SIGKILL,
    so no engine or Redis outlives the gateway that started it."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
