"""`/v1/responses`: create (streaming or not), retrieve, delete (audited); stored under the caller's tenant.
`agent` role (see deps.authenticate)."""

from __future__ import annotations

from typing import Any

from litestar import Request, Response, delete, get, post
from litestar.response import Stream

from gateway.http.routes.chat import SSE_HEADERS, EventStream, decode_body, until_disconnect
from gateway.http.routes.deps import audit_deletion, authenticate
from gateway.steps.chat import StepContext
from gateway.steps.responses import ResponseRun, ResponsesRequest, to_chat
from gateway.stores.sessions import resolve_session_id


@post("/v1/responses", status_code=200)
async def create_response(request: Request) -> Response[Any] | Stream:
    key = await authenticate(request)
    body = decode_body(await request.body(), ResponsesRequest)
    state = request.app.state
    history, previous_session = [], None
    if body.previous_response_id:
        stored = await state.responses.get(key.tenant, body.previous_response_id, "previous_response_id")
        history, previous_session = stored.messages, stored.session_id
    chat = to_chat(body, history, state.settings.request_limits)
    header = request.headers.get("x-session-id") or (body.metadata or {}).get("session_id") or previous_session
    session_id, is_new = resolve_session_id(header)
    ctx = StepContext(request.scope["sentrail_request_id"], key, session_id, is_new)  # type: ignore[typeddict-item]
    run = ResponseRun(state.responses, body, chat, key.tenant, session_id)
    service = state.chat
    if body.stream:
        events = await service.open_stream(chat, ctx, run.render, run.error_event, api="responses")
        return EventStream(events, {**SSE_HEADERS, **ctx.headers})

    async def complete() -> dict[str, Any]:
        step = await service.begin(chat, ctx, "responses")
        async for _ in service.run(step):
            pass
        return await run.finish(step.accumulator)

    result = await until_disconnect(complete(), request.receive)
    return Response(result, headers=ctx.headers)


@get("/v1/responses/{response_id:str}")
async def get_response(request: Request, response_id: str) -> dict[str, Any]:
    key = await authenticate(request)
    return (await request.app.state.responses.get(key.tenant, response_id)).response


@delete("/v1/responses/{response_id:str}", status_code=200)
async def delete_response(request: Request, response_id: str) -> dict[str, Any]:
    key = await authenticate(request)
    writes = await request.app.state.responses.deletion(key.tenant, response_id)
    await audit_deletion(request, key, "response", writes, response_id=response_id)
    return {"id": response_id, "object": "response", "deleted": True}
