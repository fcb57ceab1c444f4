"""An httpx transport that calls an ASGI app in this process and streams its response body.

httpx's own `ASGITransport` runs the app to completion before it returns the response, so a streamed
completion would arrive all at once and a client that goes away could not stop it. This one returns
as soon as the app sent its headers, hands body parts over as they come, and when the response is
closed early it tells the app `http.disconnect` (vLLM's server then aborts the request) and cancels it.
The request's read timeout holds as on a socket: the longest wait for the headers or the next part.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from typing import Any

import httpx

Message = MutableMapping[str, Any]
ASGIApp = Callable[[Message, Callable[[], Awaitable[Message]], Callable[[Message], Awaitable[None]]], Awaitable[None]]

_END = object()


class StreamingASGITransport(httpx.AsyncBaseTransport):
    def __init__(self, app: ASGIApp, client: tuple[str, int] = ("127.0.0.1", 0)) -> None:
        self.app = app
        self.client = client

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        body = await request.aread()
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": request.method,
            "headers": [(k.lower(), v) for k, v in request.headers.raw],
            "scheme": request.url.scheme,
            "path": request.url.path,
            "raw_path": request.url.raw_path.split(b"?")[0],
            "query_string": request.url.query,
            "server": (request.url.host, request.url.port or 80),
            "client": self.client,
            "root_path": "",
        }
        read_timeout = request.extensions.get("timeout", {}).get("read")
        exchange = _Exchange(body)
        task = asyncio.create_task(self._run(scope, exchange))
        stream = _Body(exchange, task, read_timeout)
        try:
            async with asyncio.timeout(read_timeout):  # (not `wait_for`: see `_Body.__aiter__`)
                start = await asyncio.shield(exchange.started)
        except TimeoutError:
            await stream.aclose()
            raise httpx.ReadTimeout(
                f"no response from the in-process app in {read_timeout} s", request=request
            ) from None
        if start is None:  # the app failed before it answered
            await task
            raise httpx.RemoteProtocolError("the in-process app ended without a response")
        return httpx.Response(start["status"], headers=start.get("headers", []), stream=stream, request=request)

    async def _run(self, scope: Message, exchange: _Exchange) -> None:
        try:
            await self.app(scope, exchange.receive, exchange.send)
        except Exception as exc:
            exchange.fail(exc)
        finally:
            exchange.finish()


class _Exchange:
    """One request/response between the transport and the app."""

    def __init__(self, body: bytes) -> None:
        self._request_body: bytes | None = body
        self.started: asyncio.Future[Message | None] = asyncio.get_running_loop().create_future()
        self.parts: asyncio.Queue[object] = asyncio.Queue()
        self.disconnected = asyncio.Event()
        self.error: BaseException | None = None

    async def receive(self) -> Message:
        if self._request_body is not None:
            body, self._request_body = self._request_body, None
            return {"type": "http.request", "body": body, "more_body": False}
        await self.disconnected.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            if not self.started.done():
                self.started.set_result(message)
        elif message["type"] == "http.response.body":
            if self.disconnected.is_set():
                raise OSError("client disconnected")  # what a server does on a write to a closed socket
            if message.get("body"):
                self.parts.put_nowait(message["body"])
            if not message.get("more_body", False):
                self.parts.put_nowait(_END)

    def fail(self, exc: BaseException) -> None:
        self.error = exc

    def finish(self) -> None:
        if not self.started.done():
            self.started.set_result(None)
        self.parts.put_nowait(_END)


class _Body(httpx.AsyncByteStream):
    def __init__(self, exchange: _Exchange, task: asyncio.Task[None], read_timeout: float | None) -> None:
        self._exchange = exchange
        self._task = task
        self._read_timeout = read_timeout

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while True:
            try:
                # `asyncio.timeout`, not `wait_for`: on Python 3.11 `wait_for` drops a cancellation that comes
                # with the part it waits for, and the request would stream on for a client that left
                async with asyncio.timeout(self._read_timeout):
                    part = await self._exchange.parts.get()
            except TimeoutError:
                raise httpx.ReadTimeout(f"the in-process app sent nothing for {self._read_timeout} s") from None
            if part is _END:
                if self._exchange.error is not None:
                    raise httpx.RemoteProtocolError(f"the in-process app failed: {self._exchange.error!r}")
                return
            assert isinstance(part, bytes)
            yield part

    async def aclose(self) -> None:
        if self._task.done():
            return
        self._exchange.disconnected.set()
        # give the app a moment to notice the disconnect and abort cleanly, then stop it
        if not (await asyncio.wait((self._task,), timeout=1.0))[0]:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
