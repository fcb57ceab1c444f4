"""`POST /v1/chat/completions`. `agent` role (see deps.authenticate)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Coroutine
from contextlib import aclosing
from typing import Any, TypeVar

import msgspec
from litestar import Request, Response, post
from litestar.response import Stream
from litestar.types import Receive, Send

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
_EVENT_STREAM = (b"content-type", b"text/event-stream; charset=utf-8")


class EventStream(Stream):
    """A stream of server-sent events, sent without Litestar's per-response machinery for streams (an anyio task
    group and cancel scope, header objects: ~60 µs of CPU a response on this machine, against ~10 µs here). The
    client gets the same messages (start, one body message per event, an empty last one) and a client that leaves
    stops the stream the same way: the task sending it is cancelled, which closes the step's generators (the
    engine request is aborted). Anything this route does not set (cookies, background tasks, route headers)
    goes through `Stream`'s own path."""

    def __init__(self, events: AsyncGenerator[bytes, None], headers: dict[str, str]) -> None:
        super().__init__(events, media_type="text/event-stream", headers=headers)
        self.events = events
        self.raw_headers = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]

    def to_asgi_response(self, app: Any, request: Any, **kwargs: Any) -> Any:
        if kwargs.get("background") is not None or kwargs.get("cookies") or kwargs.get("headers"):
            return super().to_asgi_response(app, request, **kwargs)
        return self

    async def __call__(self, scope: Any, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [*self.raw_headers, _EVENT_STREAM]})
        stream = asyncio.ensure_future(self._send_events(send))
        watcher = asyncio.ensure_future(_disconnected(receive))
        try:
            await asyncio.wait((stream, watcher), return_when=asyncio.FIRST_COMPLETED)
        finally:
            watcher.cancel()
            await stopped(stream)  # the client left, or this task is cancelled: stop the stream, wait for its cleanup
        if not stream.cancelled():
            stream.result()  # what the stream raised, if anything

    async def _send_events(self, send: Send) -> None:
        async with aclosing(self.events) as events:
            async for event in events:
                await send({"type": "http.response.body", "body": event, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})


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
        return EventStream(events, {**SSE_HEADERS, **ctx.headers})
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
        await stopped(task)
    if task not in done:
        raise ClientDisconnected("The client disconnected before the response was ready.")
    return task.result()


async def stopped(task: asyncio.Future[Any], every_s: float = 5.0) -> None:
    """Cancel `task` unless it is done, and wait until it is, cancelling it again every `every_s` seconds: a
    cancellation can be lost on the way (Python 3.11's `asyncio.wait_for` drops one that comes with the result
    it waits for), and a step that goes on would keep an engine generating for a client that left."""
    while not task.done():
        task.cancel()
        await asyncio.wait((task,), timeout=every_s)


async def _disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
