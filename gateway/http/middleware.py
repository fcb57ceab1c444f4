"""The ASGI layer around every request: a request id (bound into structlog's context and returned as
`x-request-id`), the request's SERVER span (a W3C `traceparent` from the caller continues its trace),
the HTTP metrics (by route template, status, latency, in flight), a deadline on reading the body (408),
a client that leaves while sending it as 499, and the full `Allow` list on OPTIONS. Below it, the
HTTP/1.1 protocol the server runs (`GatewayHttpProtocol`): deadlines on a request's head and body,
and the errors written before the app sees a request in OpenAI's shape.

The span is made here rather than by the generic ASGI instrumentation, which cost ~0.4 ms of CPU per
request (header collection, attribute cleaning, per-message hooks): a third of a proxied request."""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections.abc import Mapping
from typing import Any

import msgspec
import structlog
from opentelemetry import context, propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode, Tracer
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from gateway.errors import ClientDisconnected, RequestTimeout, retrieve_outcome, to_error_body
from gateway.metrics import Metrics

log = structlog.get_logger("sentrail.http")
_CLIENT_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")


def new_request_id(headers: list[tuple[bytes, bytes]]) -> str:
    """Honour a well-formed `x-request-id` from the caller; otherwise mint one."""
    for name, value in headers:
        if name == b"x-request-id":
            candidate = value.decode("latin-1")
            if _CLIENT_ID.match(candidate):
                return candidate
    return f"req_{uuid.uuid4().hex}"


def incoming_trace(headers: list[tuple[bytes, bytes]]) -> context.Context | None:
    """The caller's trace context when it sent one (`traceparent`), else None (a new trace)."""
    carrier = {name.decode("latin-1"): value.decode("latin-1") for name, value in headers
               if name in (b"traceparent", b"tracestate")}  # fmt: skip
    return propagate.extract(carrier) if carrier else None


class CoalescingSend:
    """Response body parts sent while the app runs without waiting go out together when it next waits:
    a stream whose engine delivered several events at once costs one write (one syscall, one wakeup of
    the client) instead of one per event, and an event that arrives alone still goes out at once.
    Past `limit` buffered bytes the app waits for the write (backpressure holds). The response's start
    goes out with its first body part (the server writes them in one turn: `CoalescingTransport`), and
    parts not written yet when the last one comes go out in it (a stream's `[DONE]` and its end)."""

    def __init__(self, send: Any, limit: int = 1 << 16) -> None:
        self.send = send
        self.limit = limit
        self.parts: list[bytes] = []
        self.size = 0
        self.writer: asyncio.Task[None] | None = None
        self.start: Any = None  # the response's start, until its first body part is sent

    async def __call__(self, message: Any) -> None:
        if message["type"] == "http.response.start":
            self.start = message
            return
        if message["type"] == "http.response.body" and message.get("more_body"):
            self.parts.append(message["body"])
            self.size += len(message["body"])
            if self.writer is None:
                self.writer = asyncio.get_running_loop().create_task(self._write())
                self.writer.add_done_callback(retrieve_outcome)
            elif self.size >= self.limit:
                await self.drain()
            return
        if self.parts and message["type"] == "http.response.body":  # what is not written yet goes with the end
            message = {**message, "body": b"".join([*self.parts, message.get("body", b"")])}
            self.parts.clear()
            self.size = 0
        await self.drain()
        await self._started()
        await self.send(message)

    async def _started(self) -> None:
        if self.start is not None:
            start, self.start = self.start, None
            await self.send(start)

    async def drain(self) -> None:
        """Wait for the buffered parts to be written (an error writing them is raised here)."""
        if self.writer is not None:
            await asyncio.shield(self.writer)

    async def _write(self) -> None:
        try:
            await self._started()
            while self.parts:
                body = b"".join(self.parts)
                self.parts.clear()
                self.size = 0
                await self.send({"type": "http.response.body", "body": body, "more_body": True})
        finally:
            self.writer = None


def error_json(error_type: str, message: str) -> bytes:
    return _encoder.encode(to_error_body(error_type, message))


_encoder = msgspec.json.Encoder()


def body_reader(receive: Any, deadline: float) -> Any:
    """`receive` for the app: until the body is complete, each read must finish by `deadline` (loop time),
    else `RequestTimeout` (408: the whole body is bounded, so a client trickling a byte a second cannot
    hold the request), and a disconnect raises `ClientDisconnected` (499, not a 500). Then unchanged."""
    done = False

    async def receive_body() -> Any:
        nonlocal done
        if done:
            return await receive()
        try:
            async with asyncio.timeout_at(deadline):
                message = await receive()
        except TimeoutError:
            done = True
            raise RequestTimeout("The request body did not arrive in time.") from None
        if message["type"] == "http.disconnect":
            done = True
            raise ClientDisconnected("The client disconnected while sending the request body.")
        done = not message.get("more_body", False)
        return message

    return receive_body


class RequestContextMiddleware:
    def __init__(
        self,
        app: Any,
        metrics: Metrics,
        tracer: Tracer,
        body_timeout_s: float = 60.0,
        allow: Mapping[str, str] | None = None,
    ) -> None:
        """`allow`: route template -> its methods, for OPTIONS' `Allow` header (Litestar's own answer
        lists only the first handler's methods on a path served by several)."""
        self.app = app
        self.metrics = metrics
        self.tracer = tracer
        self.body_timeout_s = body_timeout_s
        self.allow = allow or {}

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = new_request_id(scope["headers"])
        scope["sentrail_request_id"] = request_id
        method = scope["method"]
        span = self.tracer.start_span(method, incoming_trace(scope["headers"]), SpanKind.SERVER,
                                      {"http.request.method": method, "url.path": scope["path"]})  # fmt: skip
        token = context.attach(trace.set_span_in_context(span))
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(
            request_id=request_id, trace_id=format(span.get_span_context().trace_id, "032x")
        )
        status = 500
        responded = False
        header = (b"x-request-id", request_id.encode())

        async def send_with_id(message: Any) -> None:
            nonlocal status, responded
            if message["type"] == "http.response.start":
                status, responded = message["status"], True
                headers = [*message.get("headers", ()), header]
                if method == "OPTIONS" and (allow := self.allow.get(scope.get("path_template", ""))):
                    headers = [(k, v) for k, v in headers if k.lower() != b"allow"] + [(b"allow", allow.encode())]
                message["headers"] = headers
            await send(message)

        started = time.perf_counter()
        deadline = asyncio.get_running_loop().time() + self.body_timeout_s
        self.metrics.inflight.inc()
        try:
            await self.app(scope, body_reader(receive, deadline), CoalescingSend(send_with_id))
        except Exception as exc:
            if responded:
                raise
            log.error("unhandled_error", exc_info=exc)  # what the app's own handler could not answer
            body = error_json("internal_error", "The server had an error while processing your request.")
            await send_with_id({"type": "http.response.start", "status": 500, "headers": _json_headers(body)})
            await send({"type": "http.response.body", "body": body})
        finally:
            self.metrics.inflight.dec()
            route = scope.get("path_template") or "unmatched"
            span.update_name(f"{method} {route}")
            span.set_attributes({"http.route": route, "http.response.status_code": status})
            if status >= 500:
                span.set_status(Status(StatusCode.ERROR))
            span.end()
            context.detach(token)
            metrics = self.metrics
            metrics.child(metrics.requests, scope["method"], route, str(status)).inc()
            elapsed = time.perf_counter() - started
            metrics.child(metrics.latency, route).observe(elapsed)
            log.info(
                "http_request", method=scope["method"], path=scope["path"], status=status, ms=round(elapsed * 1000, 2)
            )


def _json_headers(body: bytes) -> list[tuple[bytes, bytes]]:
    return [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]


class CoalescingTransport:
    """The connection's transport for uvicorn's protocol: what is written in one turn of the event loop goes
    out in one write at the end of it. uvicorn writes a response's head on its own, then each body part: two
    syscalls and two wakeups of the client for every plain answer, where one does. Everything else is the
    transport's own; closing writes what is pending first."""

    def __init__(self, transport: Any, loop: asyncio.AbstractEventLoop) -> None:
        self.transport = transport
        self.loop = loop
        self.pending: list[bytes] = []

    def write(self, data: bytes) -> None:
        if not self.pending:
            self.loop.call_soon(self.flush)
        self.pending.append(data)

    def flush(self) -> None:
        if self.pending:
            pending, self.pending = self.pending, []
            if self.transport.is_closing():
                return
            if len(pending) == 1:
                self.transport.write(pending[0])
            else:  # one system call (uvloop writes the parts together; asyncio joins them)
                self.transport.writelines(pending)

    def close(self) -> None:
        self.flush()
        self.transport.close()

    def abort(self) -> None:
        self.pending.clear()
        self.transport.abort()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.transport, name)


class GatewayHttpProtocol(HttpToolsProtocol):
    """uvicorn's HTTP/1.1 protocol (httptools) with what it lacks for an exposed gateway. uvicorn bounds
    only the idle time between requests (`timeout_keep_alive`): a client that connects and sends
    nothing, or sends its headers a byte at a time, holds the connection for ever. Here a request's
    line and headers must arrive within `head_timeout_s` of its first byte (or of the connection):
    408 in OpenAI's shape, or a silent close when nothing was sent. The body has its deadline in the
    app (`body_reader`: 408 while an answer is possible); this is its backstop: a body still arriving
    at `body_timeout_s` means the connection takes no further request, and closes at once if the app
    already answered (it answers some requests without reading their body). A head is also bounded in
    size (httptools has no limit: it buffers whatever arrives): past `max_head_bytes`, 431. The 400
    uvicorn writes for a malformed request is JSON here too. Made per server by `http_protocol`."""

    head_timeout_s = 10.0
    body_timeout_s = 60.0
    max_head_bytes = 64 * 1024  # counted over whole reads inside a head: up to two reads (256 KiB each) more

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._deadline: asyncio.TimerHandle | None = None
        self._in_head = False
        self._head_bytes = 0

    def connection_made(self, transport: Any) -> None:
        super().connection_made(CoalescingTransport(transport, self.loop))
        self._arm(self.head_timeout_s, self._head_expired)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        in_head = self._in_head
        super().data_received(data)
        if in_head and self._in_head and not self.transport.is_closing():  # the whole read is head
            self._head_bytes += len(data)
            if self._head_bytes > self.max_head_bytes:
                self._write_error(431, "request_headers_too_large", "The request's headers are too large.")

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head, self._head_bytes = True, 0
        if self._deadline is None:  # the first byte of a request after an idle keep-alive connection
            self._arm(self.head_timeout_s, self._head_expired)

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._arm(self.body_timeout_s, self._body_expired)
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._disarm()
        super().on_message_complete()

    def send_400_response(self, msg: str) -> None:
        self._write_error(400, "invalid_request", msg)

    def _arm(self, delay_s: float, callback: Any) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(delay_s, callback)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _head_expired(self) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        if self.cycle is not None and not self.cycle.response_complete:
            self.cycle.keep_alive = False  # a pipelined head is late: close once the answer in progress is out
        elif self._in_head:
            self._write_error(408, "request_timeout", "The request's headers did not arrive in time.")
        else:
            self.transport.close()  # nothing of a request arrived

    def _body_expired(self) -> None:
        self._deadline = None
        if self.cycle is None or self.transport.is_closing():
            return
        self.cycle.keep_alive = False
        if self.cycle.response_complete:
            self.transport.close()

    def _write_error(self, status: int, error_type: str, message: str) -> None:
        """An error written before (or instead of) the app, in OpenAI's shape; the connection closes."""
        body = error_json(error_type, message)
        head = [STATUS_LINE[status]]
        for name, value in [*self.server_state.default_headers, *_json_headers(body), (b"connection", b"close")]:
            head += [name, b": ", value, b"\r\n"]
        self.transport.write(b"".join([*head, b"\r\n", body]))
        self.transport.close()
        log.warning("http_rejected", status=status, code=error_type, client=self.client and self.client[0])


def http_protocol(head_timeout_s: float, body_timeout_s: float) -> type[GatewayHttpProtocol]:
    """The protocol class for `uvicorn.Config(http=...)`, with this server's deadlines."""
    deadlines = {"head_timeout_s": head_timeout_s, "body_timeout_s": body_timeout_s}
    return type("GatewayHttpProtocol", (GatewayHttpProtocol,), deadlines)
