"""The ASGI layer around every request: a request id (bound into structlog's context and returned as
`x-request-id`), and the HTTP metrics (by route template, status, latency, in flight)."""

from __future__ import annotations

import re
import time
import uuid
from typing import Any

import structlog

from .metrics import Metrics

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


class RequestContextMiddleware:
    def __init__(self, app: Any, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = new_request_id(scope["headers"])
        scope["sentrail_request_id"] = request_id
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(request_id=request_id)
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
            await self.app(scope, receive, send_with_id)
        finally:
            self.metrics.inflight.dec()
            route = scope.get("path_template") or "unmatched"
            self.metrics.requests.labels(scope["method"], route, str(status)).inc()
            elapsed = time.perf_counter() - started
            self.metrics.latency.labels(route).observe(elapsed)
            log.info(
                "http_request", method=scope["method"], path=scope["path"], status=status, ms=round(elapsed * 1000, 2)
            )
