"""The scripted engine: a small OpenAI-compatible server that answers with the replay's planned next step.

Sentrail fronts it as a `kind: remote` engine. Episodes run one at a time, so the harness sets the
reply of the next model turn (`ScriptedEngine.plan`) before each chat call it sends to the gateway,
and the engine answers every `POST /v1/chat/completions` with it: tool calls (`finish_reason:
tool_calls`) or a final text (`stop`), as an SSE stream with a final usage chunk when the request
streams (Sentrail streams every request with tools upstream), else as one JSON body.
`GET /v1/models` answers 200 for the gateway's health checks. Stdlib only.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

MODEL_ID = "agentdojo-agent"


@dataclass
class PlannedCall:
    """One tool call the agent proposes: its id, the function's name and its JSON arguments."""

    id: str
    name: str
    arguments: str


@dataclass
class Reply:
    """What the model says on its next turn: tool calls, or (with no calls) a final text."""

    calls: list[PlannedCall] = field(default_factory=list)
    text: str = ""


@dataclass
class EngineState:
    """Shared between the harness thread and the server threads (guarded by `lock`)."""

    reply: Reply = field(default_factory=lambda: Reply(text="(no step planned)"))
    completions: int = 0  # chat completions served: exactly one per gateway step
    last_messages: list[dict[str, Any]] = field(default_factory=list)  # what the engine last saw (after rails)
    lock: threading.Lock = field(default_factory=threading.Lock)


def _usage() -> dict[str, int]:
    return {"prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 120}


def completion_events(reply: Reply, model: str) -> list[dict[str, Any]]:
    """The reply as stream chunks: role, text or one delta per tool call, the finish, then usage."""
    base = {"id": f"chatcmpl-{time.monotonic_ns()}", "object": "chat.completion.chunk",
            "created": int(time.time()), "model": model}  # fmt: skip

    def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {**base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}

    events = [chunk({"role": "assistant", "content": ""})]
    if reply.calls:
        for index, call in enumerate(reply.calls):
            function = {"name": call.name, "arguments": call.arguments}
            events.append(chunk({"tool_calls": [{"index": index, "id": call.id, "type": "function",
                                                 "function": function}]}))  # fmt: skip
        events.append(chunk({}, "tool_calls"))
    else:
        events.append(chunk({"content": reply.text}))
        events.append(chunk({}, "stop"))
    events.append({**base, "choices": [], "usage": _usage()})
    return events


def completion_body(reply: Reply, model: str) -> dict[str, Any]:
    """The reply as one plain chat completion."""
    message: dict[str, Any] = {"role": "assistant", "content": None if reply.calls else reply.text}
    if reply.calls:
        message["tool_calls"] = [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
            for c in reply.calls
        ]
    choice = {"index": 0, "message": message, "finish_reason": "tool_calls" if reply.calls else "stop"}
    return {"id": f"chatcmpl-{time.monotonic_ns()}", "object": "chat.completion", "created": int(time.time()),
            "model": model, "choices": [choice], "usage": _usage()}  # fmt: skip


def _handler(state: EngineState) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive: the gateway reuses its connections

        def setup(self) -> None:
            super().setup()
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # head and body: two writes

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _send(self, status: int, body: bytes, content_type: str = "application/json") -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            if self.path.split("?")[0] in ("/v1/models", "/models", "/health"):
                data = [{"id": MODEL_ID, "object": "model", "created": 0, "owned_by": "agentdojo-bench"}]
                self._send(200, json.dumps({"object": "list", "data": data}).encode())
            else:
                self._send(404, b'{"error": {"message": "not found", "code": "not_found"}}')

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length)
            if self.path.split("?")[0] not in ("/v1/chat/completions", "/chat/completions"):
                self._send(404, b'{"error": {"message": "not found", "code": "not_found"}}')
                return
            try:
                request = json.loads(raw)
            except json.JSONDecodeError:
                self._send(400, b'{"error": {"message": "invalid json", "code": 400}}')
                return
            with state.lock:
                reply = state.reply
                state.completions += 1
                state.last_messages = request.get("messages") or []
            model = request.get("model") or MODEL_ID
            if request.get("stream"):
                events = completion_events(reply, model)
                body = b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in events) + b"data: [DONE]\n\n"
                self._send(200, body, "text/event-stream")
            else:
                self._send(200, json.dumps(completion_body(reply, model)).encode())

    return Handler


class ScriptedEngine:
    """The server on a loopback port, serving from daemon threads; `plan` sets the next reply."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.state = EngineState()
        self.server = ThreadingHTTPServer((host, port), _handler(self.state))
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, name="scripted-engine", daemon=True)

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> ScriptedEngine:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def plan(self, reply: Reply) -> None:
        with self.state.lock:
            self.state.reply = reply

    @property
    def completions(self) -> int:
        with self.state.lock:
            return self.state.completions

    @property
    def last_messages(self) -> list[dict[str, Any]]:
        with self.state.lock:
            return list(self.state.last_messages)
