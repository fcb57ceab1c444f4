"""The gateway under clients that misbehave or crowd it (issue 15): a burst larger than the Redis pool,
a stalled or trickling request, a client that leaves while sending its body, malformed HTTP, OPTIONS,
and request bodies that are not JSON. The server tests run the real uvicorn server as `sentrail serve`
configures it (`server_config`), on a thread, against raw sockets."""

import asyncio
import contextlib
import json
import socket
import threading
import time
from collections.abc import Iterator

import httpx
import openai
import pytest
import uvicorn
from opentelemetry.trace import NoOpTracer

from engines.process import free_port
from gateway.cli.main import server_config
from gateway.http.app import create_app
from gateway.http.middleware import RequestContextMiddleware
from gateway.metrics import Metrics
from gateway.settings import load_settings
from tests.conftest import RedisServer
from tests.doubles import ScriptedEngine
from tests.integration.conftest import MODEL

CHAT = "/v1/chat/completions"
BODY = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}).encode()
DEADLINE_S = 0.5


def log_events(logs) -> list[dict]:
    return [json.loads(line) for line in logs.getvalue().splitlines() if line.startswith("{")]


# (a) the Redis pool waits for a connection instead of failing a burst


async def test_store_unavailable_logs_its_cause(make_client, logs, tmp_path):
    server = RedisServer(tmp_path)
    server.start()
    try:
        async with make_client(redis_url=server.url, redis_timeout_s=0.5) as client:
            server.stop()
            response = await client.get("/v1/sessions")
    finally:
        server.stop()
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "store_unavailable"
    assert "Connect" not in response.json()["error"]["message"]  # the client is told nothing of the cause
    (event,) = [e for e in log_events(logs) if e["event"] == "store_unavailable"]
    assert event["error_class"] == "ConnectionError" and "connect" in event["error"].lower()


# the real server, as `sentrail serve` runs it


@contextlib.contextmanager
def serving(redis_url: str, policies: str, **overrides) -> Iterator[tuple[str, int]]:
    settings = load_settings(environ={}, **{"redis_url": redis_url, "dev_mode": True, "port": free_port(),
                                            "policies_dir": policies, **overrides})  # fmt: skip
    app = create_app(settings, engines={MODEL: [(ScriptedEngine(), 8)]})
    server = uvicorn.Server(server_config(app, settings))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.02)
    try:
        yield settings.host, settings.port
    finally:
        server.should_exit = True
        thread.join(timeout=20)


async def test_a_burst_larger_than_the_redis_pool_waits_for_connections(redis_server, permissive_policies, logs):
    """Concurrent HTTP requests (the test client would run them one at a time) over a pool of 4."""
    redis_server.flush()
    with serving(redis_server.url, str(permissive_policies), redis_max_connections=4) as (host, port):
        async with httpx.AsyncClient(base_url=f"http://{host}:{port}") as client:
            responses = await asyncio.gather(*(client.get("/v1/sessions") for _ in range(50)))
    assert [r.status_code for r in responses] == [200] * 50
    assert not [e for e in log_events(logs) if e["event"] == "store_unavailable"]


@pytest.fixture
def server(redis_server, permissive_policies, logs):
    redis_server.flush()
    with serving(redis_server.url, str(permissive_policies), request_head_timeout_s=DEADLINE_S,
                 request_body_timeout_s=DEADLINE_S) as address:  # fmt: skip
        yield address


def read_all(sock: socket.socket) -> bytes:
    """Everything the server writes until it closes the connection."""
    sock.settimeout(10)
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def parse(response: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = response.partition(b"\r\n\r\n")
    status_line, *lines = head.decode().split("\r\n")
    headers = {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in lines)}
    return int(status_line.split()[1]), headers, body


def head(length: int = len(BODY)) -> bytes:
    return (f"POST {CHAT} HTTP/1.1\r\nHost: gateway\r\nContent-Type: application/json\r\n"
            f"Content-Length: {length}\r\n\r\n").encode()  # fmt: skip


# (b) deadlines on a request's head and body


def test_a_body_that_stalls_after_the_headers_gets_408(server):
    with socket.create_connection(server) as sock:
        sock.sendall(head() + BODY[:10])
        started = time.monotonic()
        status, headers, body = parse(read_all(sock))
    assert status == 408 and time.monotonic() - started < DEADLINE_S + 3
    assert headers["content-type"] == "application/json" and headers["connection"] == "close"
    assert json.loads(body)["error"] == {
        "message": "The request body did not arrive in time.",
        "type": "invalid_request_error",
        "param": None,
        "code": "request_timeout",
    }


def test_a_body_trickled_a_byte_at_a_time_is_bounded_as_a_whole(server):
    with socket.create_connection(server) as sock:
        sock.sendall(head())
        started = time.monotonic()
        sock.settimeout(0.1)
        answer = b""
        for byte in BODY:  # a byte every 0.1 s: each read is quick, the whole body would take seconds
            with contextlib.suppress(TimeoutError):
                sock.sendall(bytes([byte]))
                answer = sock.recv(65536)
            if answer or time.monotonic() - started > DEADLINE_S + 3:
                break
    assert parse(answer)[0] == 408 and time.monotonic() - started < DEADLINE_S + 3


def test_headers_that_stall_get_408(server):
    with socket.create_connection(server) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: gateway\r\nContent-Ty")
        started = time.monotonic()
        status, headers, body = parse(read_all(sock))
    assert status == 408 and time.monotonic() - started < DEADLINE_S + 3
    assert headers["content-type"] == "application/json"
    assert json.loads(body)["error"]["code"] == "request_timeout"


def test_a_connection_that_sends_nothing_is_closed(server):
    with socket.create_connection(server) as sock:
        started = time.monotonic()
        assert read_all(sock) == b""
    assert time.monotonic() - started < DEADLINE_S + 3


def test_requests_within_the_deadlines_are_served_on_a_kept_alive_connection(server):
    with socket.create_connection(server) as sock:
        for _ in range(2):
            sock.sendall(head() + BODY)
            sock.settimeout(10)
            status, headers, _ = parse(sock.recv(65536))
            assert status == 200 and headers.get("connection") != "close"
            time.sleep(DEADLINE_S * 1.5)  # idle between requests: uvicorn's keep-alive timeout (5 s) applies


def test_headers_past_the_size_limit_get_431(server):
    with socket.create_connection(server) as sock:
        sock.sendall(b"GET /v1/models HTTP/1.1\r\nHost: gateway\r\nX-Big: ")
        sock.settimeout(0.02)
        answer = b""
        for _ in range(64):  # up to 1 MiB of one header, until the server answers
            with contextlib.suppress(TimeoutError):
                sock.sendall(b"a" * 16384)
                answer = sock.recv(65536)
            if answer:
                break
    status, _, body = parse(answer)
    assert status == 431 and json.loads(body)["error"]["code"] == "request_headers_too_large"


def test_large_headers_under_the_limit_are_served(server):
    with socket.create_connection(server) as sock:
        sock.sendall(b"GET /v1/models HTTP/1.1\r\nHost: gateway\r\nX-Big: " + b"a" * 32768 + b"\r\n\r\n")
        sock.settimeout(10)
        assert parse(sock.recv(65536))[0] == 200


# (c) a client that leaves while sending its body


def test_a_client_that_disconnects_while_sending_its_body_is_a_499(server, logs):
    with socket.create_connection(server) as sock:
        sock.sendall(head(1000) + BODY[:10])
        time.sleep(0.1)
    time.sleep(0.3)
    metrics = httpx.get(f"http://{server[0]}:{server[1]}/metrics").text
    assert f'sentrail_http_requests_total{{method="POST",route="{CHAT}",status="499"}} 1.0' in metrics
    assert 'status="500"' not in metrics
    events = log_events(logs)
    assert not [e for e in events if e["event"] == "unhandled_error"]
    assert [e["status"] for e in events if e["event"] == "http_request" and e["path"] == CHAT] == [499]


# (d) errors written by the server layer, and OPTIONS


def test_a_malformed_request_gets_an_openai_error(server):
    with socket.create_connection(server) as sock:
        sock.sendall(b"NOT HTTP AT ALL\r\n\r\n")
        status, headers, body = parse(read_all(sock))
    assert status == 400 and headers["content-type"] == "application/json"
    error = json.loads(body)["error"]
    assert error["code"] == "invalid_request" and error["type"] == "invalid_request_error"


async def test_an_error_no_handler_answered_is_an_openai_500(logs):
    async def broken(scope, receive, send):
        raise RuntimeError("bug")

    sent = []

    async def send(message):
        sent.append(message)

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    scope = {"type": "http", "method": "GET", "path": "/x", "headers": []}
    await RequestContextMiddleware(broken, Metrics(), NoOpTracer())(scope, receive, send)
    assert sent[0]["status"] == 500 and (b"content-type", b"application/json") in sent[0]["headers"]
    assert json.loads(sent[1]["body"])["error"]["code"] == "internal_error"
    assert [e for e in log_events(logs) if e["event"] == "unhandled_error"]


async def test_options_lists_every_method_of_the_path(make_client):
    paths = ("/v1/sessions/s1", "/v1/responses/r1", "/v1/approvals/t1", CHAT, "/v1/sessions")
    async with make_client() as client:
        allowed = {path: (await client.options(path)).headers["allow"] for path in paths}
    assert allowed == {
        "/v1/sessions/s1": "DELETE, GET, OPTIONS",
        "/v1/responses/r1": "DELETE, GET, OPTIONS",
        "/v1/approvals/t1": "GET, OPTIONS, POST",
        CHAT: "OPTIONS, POST",
        "/v1/sessions": "GET, OPTIONS",
    }


# (e) request bodies must be JSON


@pytest.mark.parametrize(
    "content_type", [None, "text/plain", "text/plain;charset=UTF-8", "application/x-www-form-urlencoded",
                     "multipart/form-data; boundary=x", "application/json; charset=latin-1", "application/jsonx"],
)  # fmt: skip
async def test_a_post_without_a_json_content_type_gets_415(make_client, content_type):
    headers = {"content-type": content_type} if content_type else {}
    engine = ScriptedEngine()
    async with make_client(engine) as client:
        for path in (CHAT, "/v1/responses", "/v1/tool-calls/check", "/v1/approvals/t1"):
            response = await client.post(path, content=BODY, headers=headers)
            assert response.status_code == 415, (path, response.text)
            assert response.json()["error"] == {
                "message": "Send the request body as JSON with 'Content-Type: application/json'.",
                "type": "invalid_request_error", "param": None, "code": "unsupported_media_type",
            }  # fmt: skip
    assert engine.requests == []


@pytest.mark.parametrize(
    "content_type", ["application/json", "application/json; charset=utf-8", 'Application/JSON;charset="UTF-8"']
)
async def test_json_content_types_are_accepted(make_client, content_type):
    async with make_client() as client:
        response = await client.post(CHAT, content=BODY, headers={"content-type": content_type})
    assert response.status_code == 200


def test_the_official_openai_client_is_served(server):
    client = openai.OpenAI(base_url=f"http://{server[0]}:{server[1]}/v1", api_key="not-needed", max_retries=0)
    completion = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
    assert completion.choices[0].message.content == "Hello world"
    client.close()
