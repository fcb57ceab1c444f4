"""`EventStream` (the chat route's SSE response): what the client receives is what Litestar's `Stream` sends, and a
client that leaves mid-stream stops it: the events' generator is closed (the step's generators close, the engine
request is aborted) and the response ends without an error."""

import asyncio

from litestar import Litestar
from litestar.datastructures import Cookie
from litestar.response import Stream

from gateway.http.routes.chat import SSE_HEADERS, EventStream, stopped

HEADERS = {**SSE_HEADERS, "x-session-id": "sess_1", "x-ratelimit-remaining-requests": "9"}
EVENTS = [b'data: {"a":1}\n\n', b'data: {"b":2}\n\n', b"data: [DONE]\n\n"]


async def events(closed: list[bool] | None = None, gate: asyncio.Event | None = None):
    try:
        for index, event in enumerate(EVENTS):
            if gate is not None and index == 1:
                await gate.wait()  # an engine that has not answered yet
            yield event
    finally:
        if closed is not None:
            closed.append(True)


async def received(response, disconnect: asyncio.Event | None = None) -> list[dict]:
    """The ASGI messages a response sends; the client disconnects when `disconnect` is set, or once the
    response is complete (as uvicorn's `receive` answers)."""
    sent: list[dict] = []
    complete = asyncio.Event()
    leave = disconnect or complete

    async def receive():
        await leave.wait()
        return {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)
        if message["type"] == "http.response.body" and not message.get("more_body"):
            complete.set()

    await response({"type": "http", "app": APP, "state": {}}, receive, send)
    return sent


APP = Litestar(route_handlers=[], openapi_config=None)


async def test_the_client_receives_what_litestar_s_stream_sends():
    ours = EventStream(events(), HEADERS).to_asgi_response(APP, None, headers={}, cookies=[], background=None)
    theirs = Stream(events(), media_type="text/event-stream", headers=HEADERS).to_asgi_response(APP, None)
    assert await received(ours) == await received(theirs)


async def test_a_client_that_leaves_mid_stream_closes_the_events():
    closed: list[bool] = []
    disconnect = asyncio.Event()
    gate = asyncio.Event()
    stream = EventStream(events(closed, gate), HEADERS)
    task = asyncio.ensure_future(received(stream, disconnect))
    await asyncio.sleep(0.01)
    disconnect.set()  # while the second event is still awaited
    sent = await asyncio.wait_for(task, 5)
    assert closed == [True]
    assert [m.get("body") for m in sent[1:]] == [EVENTS[0]]  # nothing after the first event, no end message


async def test_a_cancelled_response_closes_the_events_before_it_returns():
    closed: list[bool] = []
    gate = asyncio.Event()
    task = asyncio.ensure_future(received(EventStream(events(closed, gate), HEADERS), asyncio.Event()))
    await asyncio.sleep(0.01)
    task.cancel()  # the server shuts down
    await asyncio.gather(task, return_exceptions=True)
    assert closed == [True]


def test_what_the_route_does_not_set_goes_through_litestar_s_own_path():
    stream = EventStream(events(), HEADERS)
    assert stream.to_asgi_response(APP, None, headers={}, cookies=[], background=None) is stream
    assert stream.to_asgi_response(APP, None, cookies=[Cookie("a", "b")]) is not stream


async def test_a_step_that_misses_its_cancellation_is_cancelled_again():
    """A cancellation can be lost on the way (Python 3.11's `asyncio.wait_for` drops one that comes with its
    result): `stopped` cancels again until the task is done, so a step never streams on for nobody."""
    cancels = []

    async def deaf_once() -> None:
        while True:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                cancels.append(True)
                if len(cancels) == 2:
                    raise  # the second one gets through

    task = asyncio.ensure_future(deaf_once())
    await asyncio.sleep(0)
    await asyncio.wait_for(stopped(task, every_s=0.05), timeout=5)
    assert task.cancelled() and len(cancels) == 2
