"""A fast OpenAI-compatible upstream stub for the gateway benchmark: canned answers, nothing else.

Raw asyncio Protocol (uvloop when installed), HTTP/1.1 keep-alive (and pipelining), no framework:
one core serves well over 10k requests/s, so the upstream is never what a gateway waits on.

    python bench/gateways/stub.py --port 9000 [--chunks 16] [--chunk-interval-ms 0]

Routes: `POST /v1/chat/completions` (JSON, or SSE with `"stream": true`, usage chunk when
`stream_options.include_usage` is set, chunked transfer encoding), `GET /v1/models`, `GET /health`,
`GET /v1/health/ready`. Anything else is a 404. `GET /stats` returns how many chat completions it
served (the harness checks that each gateway makes exactly one upstream call per request).
A prompt containing `LEAK_TRIGGER` gets `LEAK_WORDS` instead, an answer that says "launch codes" late
(words 10-11 of 17): the harness checks with it that an output rail blocks it, in a stream too, before
any of it reaches the client.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import time

STREAM_RE = re.compile(rb'"stream"\s*:\s*true')
USAGE_RE = re.compile(rb'"include_usage"\s*:\s*true')
MODEL_RE = re.compile(rb'"model"\s*:\s*"([^"]{1,200})"')
WORDS = "The quick brown fox jumps over the lazy dog while the cat watches from a sunny window sill".split()
LEAK_TRIGGER = b"recite the forbidden answer"
LEAK_WORDS = "Sure, here it is as you asked: the secret launch codes are 0000 and that is all".split()


def http_response(status: str, body: bytes, content_type: bytes = b"application/json") -> bytes:
    return (
        b"HTTP/1.1 " + status.encode() + b"\r\ncontent-type: " + content_type
        + b"\r\ncontent-length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )  # fmt: skip


def chunk(data: bytes) -> bytes:
    """One chunk of a `Transfer-Encoding: chunked` body."""
    return b"%x\r\n%s\r\n" % (len(data), data)


class Canned:
    """Responses built once per model name (cached), so that serving one is a dict lookup."""

    def __init__(self, chunks: int) -> None:
        self.chunks = chunks
        self.cache: dict[tuple[bytes, bool, bool, bool], list[bytes]] = {}
        models = {"object": "list", "data": [{"id": "stub-model", "object": "model", "created": 0, "owned_by": "stub"}]}
        self.models = http_response("200 OK", json.dumps(models).encode())
        self.health = http_response("200 OK", b'{"status":"ok"}')
        self.not_found = http_response("404 Not Found", b'{"error":{"message":"not found","code":"not_found"}}')

    def completion(self, model: bytes, stream: bool, usage: bool, leak: bool = False) -> list[bytes]:
        """The response as a list of writes: one for JSON, a head plus one per SSE event for a stream."""
        key = (model, stream, usage, leak)
        if key not in self.cache:
            self.cache[key] = self._build(model.decode(), stream, usage, LEAK_WORDS if leak else WORDS)
        return self.cache[key]

    def _build(self, model: str, stream: bool, usage: bool, vocabulary: list[str]) -> list[bytes]:
        count = len(LEAK_WORDS) if vocabulary is LEAK_WORDS else self.chunks
        words = [(" " if i else "") + vocabulary[i % len(vocabulary)] for i in range(count)]
        counts = {"prompt_tokens": 32, "completion_tokens": self.chunks, "total_tokens": 32 + self.chunks}
        base = {"id": "chatcmpl-stub", "created": int(time.time()), "model": model}
        if not stream:
            message = {"role": "assistant", "content": "".join(words)}
            choice = {"index": 0, "message": message, "finish_reason": "stop", "logprobs": None}
            body = {**base, "object": "chat.completion", "usage": counts, "choices": [choice]}
            return [http_response("200 OK", json.dumps(body).encode())]
        events = []
        base = {**base, "object": "chat.completion.chunk"}
        deltas = [{"role": "assistant", "content": ""}] + [{"content": w} for w in words]
        for i, delta in enumerate(deltas):
            finish = "stop" if i == len(deltas) - 1 else None
            events.append({**base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
        if usage:
            events.append({**base, "choices": [], "usage": counts})
        head = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
        parts = [chunk(b"data: " + json.dumps(e).encode() + b"\n\n") for e in events]
        parts.append(chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n")
        return [head + parts[0], *parts[1:]]


class StubProtocol(asyncio.Protocol):
    def __init__(self, canned: Canned, interval_s: float, stats: dict[str, int]) -> None:
        self.canned = canned
        self.interval_s = interval_s
        self.stats = stats
        self.buffer = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:  # every complete request in the buffer (pipelining)
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buffer[:end]
            length = 0
            lower = head.lower()
            at = lower.find(b"\r\ncontent-length:")
            if at >= 0:
                stop = lower.find(b"\r\n", at + 2)
                length = int(lower[at + 17 : stop if stop > 0 else len(lower)])
            if len(self.buffer) < end + 4 + length:
                return
            body = self.buffer[end + 4 : end + 4 + length]
            self.buffer = self.buffer[end + 4 + length :]
            self.respond(head[: head.find(b"\r\n")], body)

    def respond(self, request_line: bytes, body: bytes) -> None:
        assert self.transport is not None
        parts = request_line.split(b" ")
        method, path = parts[0], parts[1].split(b"?")[0] if len(parts) > 1 else b""
        if method == b"POST" and path in (b"/v1/chat/completions", b"/chat/completions"):
            self.stats["completions"] += 1
            match = MODEL_RE.search(body)
            stream = STREAM_RE.search(body) is not None
            model = match.group(1) if match else b"stub-model"
            leak = LEAK_TRIGGER in body
            writes = self.canned.completion(model, stream, USAGE_RE.search(body) is not None, leak)
            if stream and self.interval_s > 0 and len(writes) > 1:
                self.transport.write(writes[0])
                loop = asyncio.get_running_loop()
                for i, part in enumerate(writes[1:], start=1):
                    loop.call_later(i * self.interval_s, self._write_later, part)
            else:
                self.transport.write(b"".join(writes) if len(writes) > 1 else writes[0])
        elif method == b"GET" and path in (b"/v1/models", b"/models"):
            self.transport.write(self.canned.models)
        elif method == b"GET" and path in (b"/health", b"/v1/health/ready", b"/healthz"):
            self.transport.write(self.canned.health)
        elif method == b"GET" and path == b"/stats":
            self.transport.write(http_response("200 OK", json.dumps(self.stats).encode()))
        else:
            self.transport.write(self.canned.not_found)

    def _write_later(self, part: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(part)


async def serve(host: str, port: int, chunks: int, interval_ms: float) -> None:
    canned = Canned(chunks)
    stats = {"completions": 0}
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: StubProtocol(canned, interval_ms / 1000, stats), host, port, backlog=4096)
    print(f"stub listening on http://{host}:{port}", flush=True)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9000)
    parser.add_argument("--chunks", type=int, default=16, help="content chunks (tokens) per answer")
    parser.add_argument("--chunk-interval-ms", type=float, default=0.0, help="delay between stream chunks")
    args = parser.parse_args()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    try:
        asyncio.run(serve(args.host, args.port, args.chunks, args.chunk_interval_ms))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
