"""One exception tree for the gateway and ONE table from `error_type` to HTTP status and OpenAI error type.

Every failure a client can see goes through `to_error_body`: as a JSON response before the first byte
of a stream, and as the final SSE event after it. Engine and rail errors carry their own `error_type`
and are mapped here too, so there is exactly one place that decides what a client sees.
"""

from __future__ import annotations

import asyncio
from typing import Any, NamedTuple

import msgspec
import structlog
from redis.exceptions import RedisError

from protocol.openai import ErrorBody, ErrorDetail, SentrailError

log = structlog.get_logger("sentrail.errors")


class ErrorKind(NamedTuple):
    status: int
    openai_type: str


ERRORS: dict[str, ErrorKind] = {
    "invalid_request": ErrorKind(400, "invalid_request_error"),
    "invalid_json": ErrorKind(400, "invalid_request_error"),
    "content_filter": ErrorKind(400, "invalid_request_error"),
    "policy_violation": ErrorKind(400, "invalid_request_error"),
    "not_found": ErrorKind(404, "invalid_request_error"),
    "model_not_found": ErrorKind(404, "invalid_request_error"),
    "method_not_allowed": ErrorKind(405, "invalid_request_error"),
    "request_timeout": ErrorKind(408, "invalid_request_error"),
    "request_too_large": ErrorKind(413, "invalid_request_error"),
    "unsupported_media_type": ErrorKind(415, "invalid_request_error"),
    "request_headers_too_large": ErrorKind(431, "invalid_request_error"),
    "overloaded": ErrorKind(429, "rate_limit_error"),
    "client_disconnected": ErrorKind(499, "invalid_request_error"),
    "internal_error": ErrorKind(500, "server_error"),
    "engine_error": ErrorKind(502, "server_error"),
    "engine_unavailable": ErrorKind(503, "server_error"),
    "store_unavailable": ErrorKind(503, "server_error"),
    "audit_unavailable": ErrorKind(503, "server_error"),
    "invalid_api_key": ErrorKind(401, "authentication_error"),
    "permission_denied": ErrorKind(403, "permission_error"),
    "budget_exceeded": ErrorKind(403, "permission_error"),
    "rate_limit_exceeded": ErrorKind(429, "rate_limit_error"),
    "session_not_found": ErrorKind(404, "invalid_request_error"),
    "response_not_found": ErrorKind(404, "invalid_request_error"),
    "approval_not_found": ErrorKind(404, "invalid_request_error"),
    "approval_conflict": ErrorKind(409, "invalid_request_error"),
}

# Litestar's own HTTP exceptions (routing, body limits) by status code.
STATUS_ERROR_TYPES = {
    400: "invalid_request",
    404: "not_found",
    405: "method_not_allowed",
    413: "request_too_large",
    415: "unsupported_media_type",
}


class GatewayError(SentrailError):
    error_type = "internal_error"


class InvalidRequest(GatewayError):
    error_type = "invalid_request"


class InvalidJSON(GatewayError):
    error_type = "invalid_json"


class RequestTimeout(GatewayError):
    """The request's headers or body did not arrive in time (a stalled or trickling client)."""

    error_type = "request_timeout"


class UnsupportedMediaType(GatewayError):
    error_type = "unsupported_media_type"


class ClientDisconnected(GatewayError):
    """Nobody is left to answer; recorded as 499 (the nginx convention) in metrics and logs."""

    error_type = "client_disconnected"


class Unauthorized(GatewayError):
    error_type = "invalid_api_key"


class Forbidden(GatewayError):
    error_type = "permission_denied"


class BudgetExceeded(GatewayError):
    """A session budget is spent; the message names it. Not retryable, hence 403 and not 429."""

    error_type = "budget_exceeded"


class RateLimited(GatewayError):
    error_type = "rate_limit_exceeded"

    def __init__(self, message: str, retry_after_s: int, headers: dict[str, str]) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s
        self.headers = headers


class NotFound(GatewayError):
    error_type = "not_found"


class SessionNotFound(GatewayError):
    error_type = "session_not_found"

    def __init__(self, session_id: str) -> None:
        super().__init__(f"No session {session_id!r} for this tenant.", "session_id")


class AuditUnavailable(GatewayError):
    """The audit log cannot record the request (fail closed: nothing is done that it cannot record)."""

    error_type = "audit_unavailable"


class ModelNotFound(GatewayError):
    error_type = "model_not_found"

    def __init__(self, model: str) -> None:
        super().__init__(f"The model {model!r} does not exist or you do not have access to it.", "model")


def kind_of(error_type: str) -> ErrorKind:
    return ERRORS.get(error_type, ERRORS["internal_error"])


def to_error_body(error_type: str, message: str, param: str | None = None) -> ErrorBody:
    return ErrorBody(ErrorDetail(message=message, type=kind_of(error_type).openai_type, param=param, code=error_type))


def describe(exc: BaseException) -> tuple[str, str, str | None]:
    """(error_type, client-safe message, param) for any exception; unknown ones never leak details."""
    if isinstance(exc, SentrailError) and exc.error_type in ERRORS:
        return exc.error_type, str(exc), exc.param
    if isinstance(exc, RedisError):  # fail closed: no session state, no step
        _log_store_failure(exc)
        return "store_unavailable", "The session store is unavailable; retry shortly.", None
    return "internal_error", "The server had an error while processing your request.", None


def _log_store_failure(exc: RedisError) -> None:
    """The cause of a `store_unavailable`, logged once per failure however many renderers describe it
    (the client's message says nothing of it: a refused connection, a timeout, a busy pool)."""
    if getattr(exc, "_sentrail_logged", False):
        return
    exc._sentrail_logged = True  # type: ignore[attr-defined]
    cause = exc.__cause__ or exc.__context__
    log.warning("store_unavailable", error_class=type(exc).__name__, error=str(exc),
                cause=f"{type(cause).__name__}: {cause}" if cause is not None else None)  # fmt: skip


_encoder = msgspec.json.Encoder()


def sse_error_event(exc: BaseException) -> bytes:
    """The final event of a stream that failed after its first byte."""
    error_type, message, param = describe(exc)
    return b"data: " + _encoder.encode(to_error_body(error_type, message, param)) + b"\n\n"


def retrieve_outcome(done: asyncio.Future[Any]) -> None:
    """Done-callback for a future or task nobody may await any more (its caller left): its error is
    read here, so asyncio does not log it as "never retrieved"."""
    if not done.cancelled():
        done.exception()
