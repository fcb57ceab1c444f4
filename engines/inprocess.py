"""vLLM inside the gateway process: its OpenAI server app and its `AsyncLLM` client run on the gateway's
event loop, reached through an in-process ASGI transport instead of a socket. The engine core (the model
and the KV cache) still runs in vLLM's own child process, as it does under `vllm serve`.

Why: no loopback HTTP hop, no second Python server process and one process less to hold in memory
(a NIM-style single container). The request path is vLLM's own server code, as for a managed child, so
chat templates, tool-call parsing, guided decoding and usage behave the same. The trade-offs: the
engine's frontend work (tokenizing, detokenizing, tool parsing) shares the gateway's core, and a crash
of the engine frontend is a crash of the gateway; use `kind: vllm` for isolation. One in-process engine
per gateway process (vLLM keeps process-wide state such as its metrics registry).
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

import structlog

from .asgi import Message, StreamingASGITransport
from .base import EngineUnavailable
from .remote import OpenAIEngine
from .vllm_server import BASE_ARGS

log = structlog.get_logger("sentrail.engine")

_NOT_STARTED = b'{"error": {"message": "the engine is not running", "type": "engine_unavailable", "code": 503}}'


class InProcessVllmEngine(OpenAIEngine):
    def __init__(
        self,
        name: str,
        model_path: str,
        served_model_name: str,
        extra_args: tuple[str, ...] = (),
        read_timeout_s: float = 120.0,
    ) -> None:
        transport = StreamingASGITransport(self._asgi)
        super().__init__(
            name, "http://in-process", served_model_name, transport=transport, read_timeout_s=read_timeout_s
        )
        self.model_path = model_path
        self.extra_args = extra_args
        self._llm: Any = None  # vllm.v1.engine.async_llm.AsyncLLM
        self._app: Any = None  # vLLM's FastAPI app

    def argv(self) -> list[str]:
        return [
            "--model", self.model_path, "--served-model-name", self.upstream_model, *BASE_ARGS, *self.extra_args
        ]  # fmt: skip

    async def start(self) -> None:
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.entrypoints.launchers.api_server.app_state import init_app_state
        from vllm.entrypoints.launchers.app import build_app
        from vllm.entrypoints.launchers.cli_args import make_arg_parser, validate_parsed_serve_args
        from vllm.utils.argparse_utils import FlexibleArgumentParser
        from vllm.v1.engine.async_llm import AsyncLLM

        self._open_client()
        os.environ.setdefault("VLLM_WORKER_MULTIPROC_METHOD", "spawn")  # never fork the gateway itself
        os.environ.setdefault("VLLM_CONFIGURE_LOGGING", "0")  # vLLM's warnings go through the gateway's logging
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
        log.info("engine_starting", engine=self.name, kind="inprocess", model=self.model_path)
        started = time.monotonic()
        try:
            args = make_arg_parser(FlexibleArgumentParser()).parse_args(self.argv())
            validate_parsed_serve_args(args)
        except (SystemExit, ValueError, TypeError) as exc:
            raise EngineUnavailable(f"engine {self.name}: invalid vLLM arguments {self.argv()}: {exc}") from None
        engine_args = AsyncEngineArgs.from_cli_args(args)
        try:  # building the engine waits for its core process to load the model: off the event loop
            self._llm = await asyncio.to_thread(
                lambda: AsyncLLM.from_vllm_config(
                    engine_args.create_engine_config(), disable_log_stats=engine_args.disable_log_stats
                )
            )
            tasks = await self._llm.get_supported_tasks()
            app = build_app(args, tasks, self._llm.model_config)
            await init_app_state(self._llm, app.state, args, tasks)
        except Exception as exc:
            await self.stop()
            raise EngineUnavailable(f"engine {self.name} failed to start: {exc!r}") from exc
        self._app = app
        log.info("engine_ready", engine=self.name, kind="inprocess", seconds=round(time.monotonic() - started, 1))

    def exited(self) -> bool:
        """The engine core died (vLLM marks its client errored): the pool restarts it."""
        return self._llm is not None and bool(self._llm.errored)

    async def check_health(self) -> bool:
        if self._app is None or self.exited():
            return False
        try:
            await self._llm.check_health()
        except Exception:
            return False
        return True

    async def stop(self) -> None:
        llm, self._llm, self._app = self._llm, None, None
        await super().stop()
        if llm is not None:
            await asyncio.to_thread(llm.shutdown)
            log.info("engine_stopped", engine=self.name, kind="inprocess")

    def metrics(self) -> bytes:
        """vLLM's own Prometheus metrics (`vllm:*`), which the gateway's `/metrics` carries along: an
        in-process engine has no port of its own to scrape."""
        if self._llm is None:
            return b""
        from prometheus_client import generate_latest
        from vllm.v1.metrics.prometheus import get_prometheus_registry

        return generate_latest(get_prometheus_registry())

    async def _asgi(self, scope: Message, receive: Any, send: Any) -> None:
        if self._app is None:
            await send(
                {"type": "http.response.start", "status": 503, "headers": [(b"content-type", b"application/json")]}
            )
            await send({"type": "http.response.body", "body": _NOT_STARTED})
            return
        await self._app(scope, receive, send)
