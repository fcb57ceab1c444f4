"""The ASGI layer around every request: a request id (bound into structlog's context and returned as
`x-request-id`), the request's SERVER span (a W3C `traceparent` from the caller continues its trace),
and the HTTP metrics (by route template, status, latency, in flight).

The span is made here rather than by the generic ASGI instrumentation, which cost ~0.4 ms of CPU per
request (header collection, attribute cleaning, per-message hooks): a third of a proxied request."""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from typing import Any

import structlog
from opentelemetry import context, propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode, Tracer

from gateway.errors import retrieve_outcome
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
    Past `limit` buffered bytes the app waits for the write (backpressure holds)."""

    def __init__(self, send: Any, limit: int = 1 << 16) -> None:
        self.send = send
        self.limit = limit
        self.parts: list[bytes] = []
        self.size = 0
        self.writer: asyncio.Task[None] | None = None

    async def __call__(self, message: Any) -> None:
        if message["type"] == "http.response.body" and message.get("more_body"):
            self.parts.append(message["body"])
            self.size += len(message["body"])
            if self.writer is None:
                self.writer = asyncio.get_running_loop().create_task(self._write())
                self.writer.add_done_callback(retrieve_outcome)
            elif self.size >= self.limit:
                await self.drain()
            return
        await self.drain()
        await self.send(message)

    async def drain(self) -> None:
        """Wait for the buffered parts to be written (an error writing them is raised here)."""
        if self.writer is not None:
            await asyncio.shield(self.writer)

    async def _write(self) -> None:
        try:
            while self.parts:
                body = b"".join(self.parts)
                self.parts.clear()
                self.size = 0
                await self.send({"type": "http.response.body", "body": body, "more_body": True})
        finally:
            self.writer = None


class RequestContextMiddleware:
    def __init__(self, app: Any, metrics: Metrics, tracer: Tracer) -> None:
        self.app = app
        self.metrics = metrics
        self.tracer = tracer

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
        header = (b"x-request-id", request_id.encode())

        async def send_with_id(message: Any) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), header]
            await send(message)

        started = time.perf_counter()
        self.metrics.inflight.inc()
        try:
            await self.app(scope, receive, CoalescingSend(send_with_id))
        finally:
            self.metrics.inflight.dec()
            route = scope.get("path_template") or "unmatched"
            span.update_name(f"{method} {route}")
            span.set_attributes({"http.route": route, "http.response.status_code": status})
            if status >= 500:
                span.set_status(Status(StatusCode.ERROR))
            span.end()
            context.detach(token)
            self.metrics.requests.labels(scope["method"], route, str(status)).inc()
            elapsed = time.perf_counter() - started
            self.metrics.latency.labels(route).observe(elapsed)
            log.info(
                "http_request", method=scope["method"], path=scope["path"], status=status, ms=round(elapsed * 1000, 2)
            )
