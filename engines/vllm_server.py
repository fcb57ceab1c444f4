"""A managed `vllm serve` child process, driven over its OpenAI-compatible HTTP API.

Why a child process and not in-process `AsyncLLM`: vLLM's own server already does chat templating,
tool-call parsing (hermes), guided decoding for `response_format` and strict tools, and usage
accounting; the child reuses all of it through `OpenAIEngine` with no code of ours, isolates engine
crashes from the gateway, and is the same wire a remote vLLM/NIM pod speaks.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import time

import structlog

from .base import EngineUnavailable
from .process import child_setup, free_port, parse_cpus
from .remote import OpenAIEngine

log = structlog.get_logger("sentrail.engine")

# Flags every managed engine gets: eager mode (compiled bf16 gave wrong greedy output on CPU and starts
# 3x slower) and the hermes tool-call parser that SmolLM2-style chat templates need.
# One structured-output backend for every request: with `auto`, the first request whose schema only the
# `guidance` backend accepts switched the engine to it, and every named or required tool call failed after.
BASE_ARGS = ("--enforce-eager", "--enable-auto-tool-choice", "--tool-call-parser", "hermes",
             "--structured-outputs-config", '{"backend": "xgrammar"}')  # fmt: skip


def _signal_group(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


class VllmServerEngine(OpenAIEngine):
    def __init__(
        self,
        name: str,
        model_path: str,
        served_model_name: str,
        port: int = 0,
        extra_args: tuple[str, ...] = (),
        env: dict[str, str] | None = None,
        startup_timeout_s: float = 600.0,
        cpus: str | None = None,
        gpus: str | None = None,
        read_timeout_s: float = 120.0,
    ) -> None:
        self.port = port or free_port()
        super().__init__(name, f"http://127.0.0.1:{self.port}", served_model_name, read_timeout_s=read_timeout_s)
        self.model_path = model_path
        self.extra_args = extra_args
        self.env = env or {}
        self.startup_timeout_s = startup_timeout_s
        self.cpus = parse_cpus(cpus) if cpus else None  # pinned: the child and its threads run on these only
        if cpus:  # vLLM's CPU backend binds its OpenMP threads to these cores
            self.env.setdefault("VLLM_CPU_OMP_THREADS_BIND", cpus)
        if gpus is not None:
            self.env.setdefault("CUDA_VISIBLE_DEVICES", gpus)
        self._process: asyncio.subprocess.Process | None = None
        self._log_task: asyncio.Task[None] | None = None

    def command(self) -> list[str]:
        return [
            sys.executable, "-m", "vllm.entrypoints.openai.api_server",
            "--model", self.model_path, "--served-model-name", self.upstream_model,
            "--host", "127.0.0.1", "--port", str(self.port), *BASE_ARGS, *self.extra_args,
        ]  # fmt: skip

    async def start(self) -> None:
        self._open_client()
        env = {
            "VLLM_CPU_KVCACHE_SPACE": "1",
            "PYTHONUNBUFFERED": "1",
            **os.environ,
            "VLLM_CONFIGURE_LOGGING": "1",  # its output is captured below (an in-process engine turns it off)
            **self.env,
        }
        log.info("engine_starting", engine=self.name, port=self.port, model=self.model_path)
        started = time.monotonic()
        self._process = await asyncio.create_subprocess_exec(
            *self.command(),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env=env,
            preexec_fn=child_setup(self.cpus),
            start_new_session=True,  # its own process group: vLLM's worker processes go with it on stop
        )
        self._log_task = asyncio.create_task(self._pump_logs(self._process))
        while not await self.check_health():
            if self._process.returncode is not None:
                raise EngineUnavailable(f"engine {self.name} exited with code {self._process.returncode} at start")
            if time.monotonic() - started > self.startup_timeout_s:
                await self.stop()
                raise EngineUnavailable(f"engine {self.name} not healthy after {self.startup_timeout_s:.0f} s")
            await asyncio.sleep(0.5)
        log.info("engine_ready", engine=self.name, seconds=round(time.monotonic() - started, 1))

    def exited(self) -> bool:
        """The child died on its own (not stopped by us): the pool restarts it."""
        return self._process is not None and self._process.returncode is not None

    async def check_health(self) -> bool:
        if self._process is None or self._process.returncode is not None:
            return False
        return await self._upstream.status("/health", 2.0) == 200

    async def stop(self) -> None:
        """Drain and stop the server and every process of its group: after a crash of the server, its
        worker processes may still be running (and holding its output pipe); they are killed too."""
        process, self._process = self._process, None
        if process is not None:
            if process.returncode is None:
                _signal_group(process.pid, signal.SIGTERM)
                try:
                    await asyncio.wait_for(process.wait(), timeout=20)
                except TimeoutError:
                    _signal_group(process.pid, signal.SIGKILL)
                    await process.wait()
                log.info("engine_stopped", engine=self.name, code=process.returncode)
            _signal_group(process.pid, signal.SIGKILL)  # leftovers of a crashed server
        if self._log_task is not None:
            try:
                await asyncio.wait_for(self._log_task, timeout=5)
            except (TimeoutError, asyncio.CancelledError):
                self._log_task.cancel()
            self._log_task = None
        await super().stop()

    async def _pump_logs(self, process: asyncio.subprocess.Process) -> None:
        """The child's output becomes structured log lines tagged with the engine name."""
        assert process.stdout is not None
        async for raw in process.stdout:
            line = raw.decode(errors="replace").rstrip()
            if line:
                level = logging.WARNING if ("ERROR" in line or "Traceback" in line) else logging.DEBUG
                log.log(level, "engine_output", engine=self.name, line=line)
