from __future__ import annotations

import msgspec
from litestar import Request, Response, post
from litestar.response import Stream

from ..errors import InvalidJSON, InvalidRequest
from ..protocol import ChatCompletionRequest, RequestFieldError, validation_message, validation_param

_decoder = msgspec.json.Decoder(ChatCompletionRequest)
_encoder = msgspec.json.Encoder()
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def decode_chat_request(body: bytes) -> ChatCompletionRequest:
    """Bytes -> a validated request, or an `InvalidJSON` / `InvalidRequest` naming the param."""
    if not body.strip():
        raise InvalidJSON("The request body is empty; send a JSON object.")
    try:
        request = _decoder.decode(body)
    except msgspec.ValidationError as exc:
        param = validation_param(exc)
        where = f" for '{param}'" if param else ""
        raise InvalidRequest(f"Invalid value{where}: {validation_message(exc)}", param) from None
    except msgspec.DecodeError as exc:
        raise InvalidJSON(f"The request body is not valid JSON: {exc}") from None
    try:
        request.validate()
    except RequestFieldError as exc:
        raise InvalidRequest(str(exc), exc.param) from None
    return request


@post("/v1/chat/completions", status_code=200)
async def chat_completions(request: Request) -> Response[bytes] | Stream:
    chat_request = decode_chat_request(await request.body())
    service = request.app.state.chat
    request_id = request.scope["sentrail_request_id"]  # type: ignore[typeddict-item]
    if chat_request.stream:
        events = await service.open_stream(chat_request, request_id)
        return Stream(events, media_type="text/event-stream", headers=SSE_HEADERS)
    result = await service.complete(chat_request, request_id)
    return Response(_encoder.encode(result), media_type="application/json")
