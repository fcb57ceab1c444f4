"""`POST /v1/chat/completions`. `agent` role (see deps.authenticate)."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

import msgspec
from litestar import Request, Response, post
from litestar.response import Stream
from litestar.types import Receive

from gateway.errors import ClientDisconnected, InvalidJSON, InvalidRequest
from gateway.http.routes.deps import authenticate
from gateway.steps.chat import StepContext
from gateway.stores.sessions import resolve_session_id
from protocol.openai import (
    DEFAULT_LIMITS,
    ChatCompletionRequest,
    RequestFieldError,
    RequestLimits,
    validation_message,
    validation_param,
)

_encoder = msgspec.json.Encoder()
T = TypeVar("T")
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def decode_chat_request(body: bytes, limits: RequestLimits = DEFAULT_LIMITS) -> ChatCompletionRequest:
    """Bytes -> a validated chat request, or an `InvalidJSON` / `InvalidRequest` naming the param."""
    request = decode_body(body, ChatCompletionRequest)
    try:
        request.validate(limits)
    except RequestFieldError as exc:
        raise InvalidRequest(str(exc), exc.param) from None
    return request


def decode_body(body: bytes, kind: type[T]) -> T:
    """Bytes -> a `kind` struct, or an `InvalidJSON` / `InvalidRequest` naming the param."""
    if not body.strip():
        raise InvalidJSON("The request body is empty; send a JSON object.")
    try:
        return msgspec.json.decode(body, type=kind)
    except msgspec.ValidationError as exc:
        param = validation_param(exc)
        where = f" for '{param}'" if param else ""
        raise InvalidRequest(f"Invalid value{where}: {validation_message(exc)}", param) from None
    except msgspec.DecodeError as exc:
        raise InvalidJSON(f"The request body is not valid JSON: {exc}") from None
    except UnicodeDecodeError:
        raise InvalidJSON("The request body is not valid UTF-8.") from None
    except RecursionError:
        raise InvalidRequest("The request body nests too deeply.") from None


@post("/v1/chat/completions", status_code=200)
async def chat_completions(request: Request) -> Response[bytes] | Stream:
    key = await authenticate(request)
    chat_request = decode_chat_request(await request.body(), request.app.state.settings.request_limits)
    session_id, is_new = resolve_session_id(request.headers.get("x-session-id"), chat_request)
    ctx = StepContext(request.scope["sentrail_request_id"], key, session_id, is_new)  # type: ignore[typeddict-item]
    service = request.app.state.chat
    if chat_request.stream:
        events = await service.open_stream(chat_request, ctx)
        return Stream(events, media_type="text/event-stream", headers={**SSE_HEADERS, **ctx.headers})
    result = await until_disconnect(service.complete(chat_request, ctx), request.receive)
    return Response(_encoder.encode(result), media_type="application/json", headers=ctx.headers)


async def until_disconnect(work: Coroutine[Any, Any, T], receive: Receive) -> T:
    """Run `work`, cancelling it when the client disconnects first (so the engine request aborts).
    Streams get this from Litestar; a plain response would otherwise generate for nobody."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_disconnected(receive))
    try:
        done, _ = await asyncio.wait((task, watcher), return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()
    if task not in done:
        raise ClientDisconnected("The client disconnected before the response was ready.")
    return task.result()


async def _disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
