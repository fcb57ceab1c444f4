"""The network client under OpenAIEngine (engines/http1.py) against a real local HTTP server: SSE lines of
any length and split anywhere, plain JSON answers, https with its certificate checked, the connection
reused and replaced when the server dropped it, an early close seen by the server, an unreachable server."""

import asyncio
import ssl

import msgspec
import pytest
import trustme
from aiohttp import web

from engines.base import EngineUnavailable
from engines.remote import OpenAIEngine
from engines.upstream import split_lines
from protocol.openai import ChatCompletionRequest, UserMessage
from tests.doubles import text_chunks

REQUEST = ChatCompletionRequest(model="public", messages=[UserMessage("hi")], stream=True)
ANSWER = {"id": "c1", "object": "chat.completion", "created": 1, "model": "m", "choices": [
    {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "plain " * 2000}}]}  # fmt: skip


async def parts(*chunks: bytes):
    for chunk in chunks:
        yield chunk


async def test_lines_split_anywhere_and_of_any_length():
    long = b"x" * 300_000
    batches = [batch async for batch in split_lines(parts(b"data: a\r", b"\n\ndata: ", long, b"\n", b"tail"))]
    assert batches == [[b"data: a", b""], [b"data: " + long], [b"tail"]]  # the lines each piece completed


class Server:
    """An OpenAI-style streaming endpoint that records the client ports it saw and when a client left."""

    def __init__(self, events: int, pause_s: float = 0.0) -> None:
        self.events, self.pause_s = events, pause_s
        self.ports: set[int] = set()
        self.disconnected = asyncio.Event()

    async def chat(self, request: web.Request) -> web.StreamResponse:
        self.ports.add(request.transport.get_extra_info("peername")[1])
        if not (await request.json()).get("stream"):
            return web.json_response(ANSWER)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        try:
            for chunk in text_chunks(*["a"] * self.events)[: self.events]:
                await response.write(b"data: " + msgspec.json.encode(chunk) + b"\n\n")
                await asyncio.sleep(self.pause_s)
            await response.write(b"data: [DONE]\n\n")
        except (ConnectionResetError, asyncio.CancelledError):
            self.disconnected.set()
            raise
        return response


async def serving(server: Server, keepalive_timeout_s: float = 75.0):
    app = web.Application()
    app.router.add_post("/v1/chat/completions", server.chat)
    runner = web.AppRunner(app, keepalive_timeout=keepalive_timeout_s)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, site._server.sockets[0].getsockname()[1]


async def test_streams_and_reuses_its_connection():
    server = Server(events=3)
    runner, port = await serving(server)
    engine = OpenAIEngine("e#0", f"http://127.0.0.1:{port}", "m")
    try:
        for _ in range(3):
            chunks = [chunk async for chunk in engine.generate(REQUEST, "r")]
            assert len(chunks) == 3
        assert len(server.ports) == 1, "each request opened a new connection"
    finally:
        await engine.stop()
        await runner.cleanup()


async def test_closing_early_is_seen_by_the_server():
    server = Server(events=1000, pause_s=0.01)
    runner, port = await serving(server)
    engine = OpenAIEngine("e#0", f"http://127.0.0.1:{port}", "m")
    try:
        stream = engine.generate(REQUEST, "r")
        await anext(stream)
        await engine.abort("r")
        await stream.aclose()
        await asyncio.wait_for(server.disconnected.wait(), timeout=5)
    finally:
        await engine.stop()
        await runner.cleanup()


async def test_a_plain_answer_and_a_connection_the_server_dropped_meanwhile():
    server = Server(events=3)
    runner, port = await serving(server, keepalive_timeout_s=0.05)
    engine = OpenAIEngine("e#0", f"http://127.0.0.1:{port}", "m")
    plain = msgspec.structs.replace(REQUEST, stream=False)
    try:
        (chunk,) = [chunk async for chunk in engine.generate(plain, "r1")]
        assert chunk.choices[0].delta.content == "plain " * 2000
        await asyncio.sleep(0.3)  # the server closes the idle connection
        chunks = [chunk async for chunk in engine.generate(REQUEST, "r2")]
        assert len(chunks) == 3 and len(server.ports) == 2
    finally:
        await engine.stop()
        await runner.cleanup()


async def test_an_unreachable_engine_is_unavailable():
    probe = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = probe.sockets[0].getsockname()[1]
    probe.close()
    await probe.wait_closed()  # nothing listens there now
    engine = OpenAIEngine("e#0", f"http://127.0.0.1:{port}", "m", connect_timeout_s=2)
    try:
        with pytest.raises(EngineUnavailable, match="ClientConnectorError"):
            [chunk async for chunk in engine.generate(REQUEST, "r")]
        assert await engine.check_health() is False
    finally:
        await engine.stop()


async def test_cancelling_before_the_answer_began_is_seen_by_the_server():
    """A plain request's answer comes at the end: a caller that leaves while the engine still works must
    close the connection (the engine's server cancels the request), not leave it open."""
    left = asyncio.Event()

    async def slow(request: web.Request) -> web.Response:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            left.set()
            raise
        return web.json_response(ANSWER)

    app = web.Application()
    app.router.add_post("/v1/chat/completions", slow)
    runner = web.AppRunner(app, handler_cancellation=True)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    engine = OpenAIEngine("e#0", f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}", "m")
    plain = msgspec.structs.replace(REQUEST, stream=False)
    try:
        waiting = asyncio.ensure_future(anext(engine.generate(plain, "r")))
        await asyncio.sleep(0.3)
        waiting.cancel()
        await asyncio.wait_for(left.wait(), timeout=5)
    finally:
        await engine.stop()
        await runner.cleanup()


async def test_an_https_engine_is_reached_and_its_certificate_checked(tmp_path, monkeypatch):
    authority = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert("127.0.0.1").configure_cert(server_context)
    server = Server(events=3)
    app = web.Application()
    app.router.add_post("/v1/chat/completions", server.chat)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_context)
    await site.start()
    url = f"https://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"
    untrusting = OpenAIEngine("e#0", url, "m")  # the system's CAs do not know this one
    authority.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "ca.pem"))
    trusting = OpenAIEngine("e#1", url, "m")
    try:
        with pytest.raises(EngineUnavailable, match="CERTIFICATE_VERIFY_FAILED"):
            [chunk async for chunk in untrusting.generate(REQUEST, "r1")]
        assert len([chunk async for chunk in trusting.generate(REQUEST, "r2")]) == 3
    finally:
        await untrusting.stop()
        await trusting.stop()
        await runner.cleanup()
