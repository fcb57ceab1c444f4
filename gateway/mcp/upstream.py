"""Upstream MCP servers: one supervised connection each, through the `mcp` SDK's client.

A supervisor task owns each connection (the SDK's client is entered and left in one task): it starts the
stdio command (or connects to the URL), keeps the connection while it answers, and when it breaks (the
process died, the connection closed, a health ping failed) starts it again after a backoff (0.5, 1, 2, 5,
10, 30, 60 s; back to the start after a minute of health). A call never waits longer than the server's
`call_timeout_s`; a call made while the server restarts waits for it up to `connect_timeout_s`; a call made
while it backs off fails at once. Nothing an upstream does raises past `call` / `list_tools` except
`UpstreamUnavailable`, which the MCP endpoint turns into a tool error.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx2
import mcp_types as types
import structlog
from mcp import Client
from mcp.client.stdio import StdioServerParameters
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

from gateway.mcp.config import UpstreamConfig

log = structlog.get_logger("sentrail.mcp")
BACKOFF_S = (0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0)
HEALTHY_S = 60.0  # a connection that lasted this long resets the backoff
PING_S = 5.0  # how often the connection is checked by listing the tools again


class UpstreamUnavailable(Exception):
    """The upstream could not answer: down, restarting, too slow, or it broke during the call."""


class Upstream:
    """One configured server and its supervised connection."""

    def __init__(self, config: UpstreamConfig, cwd: str | None = None) -> None:
        self.config = config
        self.name = config.name
        self.cwd = config.cwd or cwd
        self.client: Client | None = None
        self.ready = asyncio.Event()  # set while connected
        self.restarts = 0
        self.checks = 0  # health checks passed on the current connection
        self.tools: list[types.Tool] | None = None  # at the last listing (on connect, each check, each tools/list)
        self.generation = 0
        self.checked = asyncio.Event()  # set (and replaced) after each one passed
        self.retry_at = 0.0  # while backing off: when the next start is due
        self._broken = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    @property
    def kind(self) -> str:
        return "stdio" if self.config.command is not None else "http"

    def start(self) -> None:
        if self._task is not None:
            return
        self._task = asyncio.create_task(self._supervise(), name=f"mcp-upstream-{self.name}")

    async def stop(self) -> None:
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task

    async def wait_ready(self, timeout_s: float) -> None:
        async with asyncio.timeout(timeout_s):
            await self.ready.wait()

    async def list_tools(self) -> list[types.Tool]:
        return await self._list(await self._client(self.config.list_timeout_s))

    async def _list(self, client: Client) -> list[types.Tool]:
        """The server's tools, every page; kept as `tools` (a change bumps `generation`)."""
        tools: list[types.Tool] = []
        cursor: str | None = None
        for _ in range(100):  # a paginator that never ends cannot hang the listing
            result = await self._run(client.list_tools(cursor=cursor), self.config.list_timeout_s, "tools/list")
            tools.extend(result.tools)
            cursor = result.next_cursor
            if not cursor:
                break
        if tools != self.tools:
            self.tools, self.generation = tools, self.generation + 1
        return tools

    async def call(self, tool: str, arguments: dict[str, Any]) -> types.CallToolResult:
        timeout = self.config.call_timeout_s
        started = time.monotonic()
        client = await self._client(timeout)
        left = max(0.1, timeout - (time.monotonic() - started))
        return await self._run(client.call_tool(tool, arguments, read_timeout_seconds=left), left, f"tool {tool}")

    async def _client(self, timeout_s: float) -> Client:
        if self.client is not None and self.ready.is_set():
            return self.client
        if self.retry_at > time.monotonic():
            wait = self.retry_at - time.monotonic()
            raise UpstreamUnavailable(f"MCP server {self.name!r} is unavailable; it restarts in {wait:.0f} s")
        try:
            await self.wait_ready(min(timeout_s, self.config.connect_timeout_s))
        except TimeoutError:
            raise UpstreamUnavailable(f"MCP server {self.name!r} did not become ready in time") from None
        assert self.client is not None
        return self.client

    async def _run(self, work: Any, timeout_s: float, what: str) -> Any:
        try:
            async with asyncio.timeout(timeout_s):
                return await work
        except TimeoutError:
            raise UpstreamUnavailable(f"MCP server {self.name!r} did not answer {what} in {timeout_s:g} s") from None
        except MCPError as exc:
            if exc.error.code == types.CONNECTION_CLOSED:
                self._mark_broken()
                raise UpstreamUnavailable(f"MCP server {self.name!r} closed the connection during {what}; "
                                          "it is being restarted") from None  # fmt: skip
            if exc.error.code == types.REQUEST_TIMEOUT:
                raise UpstreamUnavailable(f"MCP server {self.name!r} did not answer {what} in time") from None
            raise  # a protocol error the server answered with (unknown tool, invalid params): the caller maps it
        except (OSError, httpx2.HTTPError) as exc:
            self._mark_broken()
            raise UpstreamUnavailable(f"MCP server {self.name!r} is unreachable: {type(exc).__name__}") from None

    def _mark_broken(self) -> None:
        """The connection is gone: calls from now on wait for the restarted one."""
        self.ready.clear()
        self._broken.set()

    async def _supervise(self) -> None:
        attempt = 0
        while not self._stopping:
            connected_at = None
            try:
                async with self._connect() as client:
                    self._broken.clear()
                    await self._list(client)  # a restarted server may define its tools anew: known before any call
                    self.client, connected_at = client, time.monotonic()
                    self.retry_at = 0.0
                    self.ready.set()
                    log.info("mcp_upstream_ready", server=self.name, kind=self.kind, restarts=self.restarts)
                    await self._watch(client)
            except asyncio.CancelledError:
                raise
            except BaseException as exc:  # whatever the upstream does, the supervisor goes on
                log.warning("mcp_upstream_failed", server=self.name, error=_describe(exc))
            finally:
                self.ready.clear()
                self.client = None
            if self._stopping:
                return
            if connected_at is not None and time.monotonic() - connected_at >= HEALTHY_S:
                attempt = 0
            delay = BACKOFF_S[min(attempt, len(BACKOFF_S) - 1)]
            attempt += 1
            self.restarts += 1
            self.retry_at = time.monotonic() + delay
            log.warning("mcp_upstream_restarting", server=self.name, in_s=delay, restarts=self.restarts)
            await asyncio.sleep(delay)
            self.retry_at = 0.0

    async def _watch(self, client: Client) -> None:
        """Until the connection breaks: a failed call says so at once; every PING_S the tools are listed again
        (a check that the server answers, and a definition changed behind the same connection is seen)."""
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(PING_S):
                    await self._broken.wait()
            if self._broken.is_set():
                return
            try:
                await self._list(client)
            except MCPError as exc:  # an answer (an error included) is a live peer; a closed connection is not
                if exc.error.code == types.CONNECTION_CLOSED:
                    log.warning("mcp_upstream_check_failed", server=self.name, error=_describe(exc))
                    return
            except UpstreamUnavailable as exc:
                log.warning("mcp_upstream_check_failed", server=self.name, error=str(exc))
                return
            self.checks += 1
            self.checked.set()
            self.checked = asyncio.Event()

    @contextlib.asynccontextmanager
    async def _connect(self) -> AsyncIterator[Client]:
        config = self.config
        if config.command is not None:
            argv = config.argv()
            env = {**os.environ, **config.env} if config.env else None
            params = StdioServerParameters(command=argv[0], args=argv[1:], env=env, cwd=self.cwd)
            server: Any = params
        else:
            assert config.url is not None
            http = httpx2.AsyncClient(headers=dict(config.headers), timeout=httpx2.Timeout(config.call_timeout_s))
            server = streamable_http_client(config.url, http_client=http)
        client = Client(server, cache=None, read_timeout_seconds=config.call_timeout_s)
        async with contextlib.AsyncExitStack() as stack:
            if config.command is None:
                await stack.enter_async_context(http)
            async with asyncio.timeout(config.connect_timeout_s):  # in this task: the SDK's scopes stay in it
                entered = await stack.enter_async_context(client)
            yield entered


def _describe(exc: BaseException) -> str:
    if isinstance(exc, BaseExceptionGroup):
        return "; ".join(_describe(e) for e in exc.exceptions)
    return f"{type(exc).__name__}: {exc}"[:300]
