"""The in-process ASGI transport streams (httpx's own buffers the whole body) and tells the app when the
client went away."""

import asyncio

import httpx
import pytest

from engines.asgi import StreamingASGITransport


class Ticker:
    """An ASGI app that sends a part, then waits for the test to let the next one go."""

    def __init__(self, parts: int = 3) -> None:
        self.parts = parts
        self.go = asyncio.Event()
        self.events: list[str] = []

    async def __call__(self, scope, receive, send):
        request = await receive()
        self.events.append(f"{scope['method']} {scope['path']} {request['body'].decode()}")
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        try:
            for index in range(self.parts):
                await send({"type": "http.response.body", "body": f"part{index};".encode(), "more_body": True})
                waiter = asyncio.ensure_future(receive())
                go = asyncio.ensure_future(self.go.wait())
                done, pending = await asyncio.wait({waiter, go}, return_when=asyncio.FIRST_COMPLETED)
                for task in pending:
                    task.cancel()
                if waiter in done:
                    self.events.append(waiter.result()["type"])
                    return
                self.go.clear()
            await send({"type": "http.response.body", "body": b"end", "more_body": False})
        except asyncio.CancelledError:
            self.events.append("cancelled")
            raise


async def test_parts_arrive_before_the_app_is_done():
    app = Ticker()
    async with httpx.AsyncClient(transport=StreamingASGITransport(app), base_url="http://in-process") as client:
        async with client.stream("POST", "/v1/x?y=1", content=b"hello") as response:
            assert response.status_code == 200
            seen = []
            async for part in response.aiter_text():
                seen.append(part)
                app.go.set()
    assert seen == ["part0;", "part1;", "part2;", "end"]
    assert app.events == ["POST /v1/x hello"]


async def test_closing_early_tells_the_app_the_client_left():
    app = Ticker()
    async with httpx.AsyncClient(transport=StreamingASGITransport(app), base_url="http://in-process") as client:
        async with client.stream("GET", "/") as response:
            async for part in response.aiter_text():
                assert part == "part0;"
                break
    assert app.events[-1] == "http.disconnect"


async def test_an_app_that_ignores_the_disconnect_is_cancelled():
    async def stubborn(scope, receive, send):
        await receive()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"x", "more_body": True})
        await asyncio.sleep(3600)

    async def read_one() -> None:
        transport = StreamingASGITransport(stubborn)
        async with httpx.AsyncClient(transport=transport, base_url="http://in-process") as client:
            async with client.stream("GET", "/") as response:
                async for _ in response.aiter_bytes():
                    break

    await asyncio.wait_for(read_one(), timeout=10)  # the app is cancelled after its grace period, not awaited forever


async def test_an_app_that_fails_mid_body_is_a_protocol_error():
    async def broken(scope, receive, send):
        await receive()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"x", "more_body": True})
        raise RuntimeError("boom")

    async with httpx.AsyncClient(transport=StreamingASGITransport(broken), base_url="http://in-process") as client:
        with pytest.raises(httpx.RemoteProtocolError, match="boom"):
            await client.get("/")


async def test_an_app_that_fails_before_answering_is_a_protocol_error():
    async def broken(scope, receive, send):
        raise RuntimeError("no")

    async with httpx.AsyncClient(transport=StreamingASGITransport(broken), base_url="http://in-process") as client:
        with pytest.raises(httpx.RemoteProtocolError, match="without a response"):
            await client.get("/")


async def test_the_read_timeout_holds_for_headers_and_between_parts():
    silent = Ticker()  # sends one part, then waits for a go that never comes

    async def mute(scope, receive, send):
        await asyncio.sleep(3600)

    timeout = httpx.Timeout(5.0, read=0.2)
    async with httpx.AsyncClient(
        transport=StreamingASGITransport(mute), base_url="http://x", timeout=timeout
    ) as client:
        with pytest.raises(httpx.ReadTimeout):
            await client.get("/")
    async with httpx.AsyncClient(transport=StreamingASGITransport(silent), base_url="http://x", timeout=timeout) as c:
        async with c.stream("GET", "/") as response:
            with pytest.raises(httpx.ReadTimeout):
                async for _ in response.aiter_bytes():
                    pass
    assert silent.events[-1] == "http.disconnect"  # the app was told the client is gone


async def test_a_reader_cancelled_as_a_part_arrives_stops():
    """A cancellation that comes in the same turn as the part the reader waits for stops the reader (Python
    3.11's `asyncio.wait_for` would drop it: the request would stream on, the engine generating for nobody)."""
    reader: asyncio.Task[None] | None = None
    seen: list[bytes] = []

    async def app(scope, receive, send):
        await receive()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"first", "more_body": True})
        await asyncio.sleep(0.05)  # the reader is waiting for the next part
        await send({"type": "http.response.body", "body": b"second", "more_body": True})
        reader.cancel()  # the client leaves as the part arrives
        for _ in range(50):  # what a reader that missed it would go on reading
            await asyncio.sleep(0.005)
            await send({"type": "http.response.body", "body": b"more", "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def read() -> None:
        async with httpx.AsyncClient(transport=StreamingASGITransport(app), base_url="http://in-process") as client:
            async with client.stream("GET", "/") as response:
                async for part in response.aiter_bytes():
                    seen.append(part)

    reader = asyncio.ensure_future(read())
    done, _ = await asyncio.wait((reader,), timeout=10)
    assert done and reader.cancelled(), "the reader went on after it was cancelled"
    assert b"more" not in seen
