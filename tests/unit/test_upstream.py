"""The network client under OpenAIEngine (aiohttp) against a real local HTTP server: SSE lines of any
length and split anywhere, the connection reused across requests, an early close seen by the server."""

import asyncio

import msgspec
from aiohttp import web

from engines.remote import OpenAIEngine
from engines.upstream import split_lines
from gateway.protocol import ChatCompletionRequest, UserMessage
from tests.doubles import text_chunks

REQUEST = ChatCompletionRequest(model="public", messages=[UserMessage("hi")], stream=True)


async def parts(*chunks: bytes):
    for chunk in chunks:
        yield chunk


async def test_lines_split_anywhere_and_of_any_length():
    long = b"x" * 300_000
    lines = [line async for line in split_lines(parts(b"data: a\r", b"\n\ndata: ", long, b"\n", b"tail"))]
    assert lines == [b"data: a", b"", b"data: " + long, b"tail"]


class Server:
    """An OpenAI-style streaming endpoint that records the client ports it saw and when a client left."""

    def __init__(self, events: int, pause_s: float = 0.0) -> None:
        self.events, self.pause_s = events, pause_s
        self.ports: set[int] = set()
        self.disconnected = asyncio.Event()

    async def chat(self, request: web.Request) -> web.StreamResponse:
        self.ports.add(request.transport.get_extra_info("peername")[1])
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


async def serving(server: Server):
    app = web.Application()
    app.router.add_post("/v1/chat/completions", server.chat)
    runner = web.AppRunner(app)
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
