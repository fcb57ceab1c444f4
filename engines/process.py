"""Helpers for the child processes Sentrail manages (vLLM servers, the embedded Redis)."""

from __future__ import annotations

import contextlib
import ctypes
import signal
import socket

PR_SET_PDEATHSIG = 1


def free_port() -> int:
    """A loopback port that is free now (the child binds it right after)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def die_with_parent() -> None:
    """`preexec_fn` for children on Linux: the child gets SIGTERM when Sentrail dies, even by SIGKILL,
    so no engine or Redis outlives the gateway that started it."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
