"""How an OpenAI-compatible upstream's answers become chunks or engine errors (HTTP faked in-process)."""

import asyncio

import httpx
import msgspec
import pytest

from engines.base import EngineError, EngineRejected, EngineUnavailable
from engines.remote import OpenAIEngine
from gateway.steps.streaming import Accumulator
from protocol.openai import ChatCompletionRequest, UserMessage
from tests.doubles import text_chunks

REQUEST = ChatCompletionRequest(model="public", messages=[UserMessage("hi")], stream=True)


def engine_answering(handler) -> OpenAIEngine:
    return OpenAIEngine("e#0", "http://upstream", "upstream-model", transport=httpx.MockTransport(handler))


def sse(*events: bytes) -> bytes:
    return b"".join(b"data: " + e + b"\n\n" for e in events)


async def collect(engine: OpenAIEngine, request: ChatCompletionRequest = REQUEST):
    return [chunk async for chunk in engine.generate(request, "req-1")]


async def test_streams_chunks_until_done():
    seen = {}

    def handler(request: httpx.Request) -> httpx.Response:
        seen["body"] = msgspec.json.decode(request.content)
        seen["request_id"] = request.headers["x-request-id"]
        events = [msgspec.json.encode(c) for c in text_chunks("Hi")]
        return httpx.Response(200, content=sse(*events, b"[DONE]"), headers={"content-type": "text/event-stream"})

    chunks = await collect(engine_answering(handler))
    assert [c.choices[0].delta.content for c in chunks if c.choices] == ["", "Hi", None]
    assert chunks[-1].usage is not None
    assert seen["body"]["model"] == "upstream-model" and seen["body"]["stream"] is True
    assert seen["request_id"] == "req-1"


async def test_a_plain_request_gets_one_answer_as_one_chunk():
    seen = {}
    answer = {
        "id": "chatcmpl-1", "object": "chat.completion", "created": 7, "model": "upstream-model",
        "choices": [{"index": 0, "finish_reason": "tool_calls", "logprobs": None, "message": {
            "role": "assistant", "content": "Checking.", "reasoning_content": None,
            "tool_calls": [{"id": "call_9", "type": "function",
                            "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]}}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8, "prompt_tokens_details": None},
    }  # fmt: skip

    def handler(request: httpx.Request) -> httpx.Response:
        seen["body"] = msgspec.json.decode(request.content)
        return httpx.Response(200, json=answer)

    plain = msgspec.structs.replace(REQUEST, stream=False)
    (chunk,) = await collect(engine_answering(handler), plain)
    assert not seen["body"].get("stream") and "stream_options" not in seen["body"]
    accumulator = Accumulator()
    accumulator.add(chunk)
    result = accumulator.result("public")
    assert result.choices[0].message.content == "Checking." and result.choices[0].finish_reason == "tool_calls"
    (call,) = result.choices[0].message.tool_calls
    assert (call.id, call.function.name, call.function.arguments) == ("call_9", "get_weather", '{"city": "Paris"}')
    assert result.usage.total_tokens == 8 and result.id == "chatcmpl-1"


async def test_an_unreadable_plain_answer_is_an_unavailable_engine():
    engine = engine_answering(lambda request: httpx.Response(200, content=b"<html>"))
    with pytest.raises(EngineUnavailable, match="unreadable answer"):
        await collect(engine, msgspec.structs.replace(REQUEST, stream=False))


@pytest.mark.parametrize(
    ("status", "error", "param"),
    [(400, EngineRejected, "max_tokens"), (404, EngineRejected, "max_tokens"), (500, EngineUnavailable, None),
     (503, EngineUnavailable, None), (401, EngineUnavailable, None)],
)  # fmt: skip
async def test_upstream_status_maps_to_engine_errors(status, error, param):
    body = {"error": {"message": "too many tokens", "type": "BadRequestError", "param": "max_tokens", "code": 400}}
    engine = engine_answering(lambda request: httpx.Response(status, json=body))
    with pytest.raises(error) as caught:
        await collect(engine)
    assert caught.type is error
    assert caught.value.param == param
    assert "too many tokens" in str(caught.value)


async def test_error_event_mid_stream_is_an_engine_error():
    first = msgspec.json.encode(text_chunks("Hi")[0])
    failure = b'{"error": {"message": "engine core died", "type": "InternalServerError", "code": 500}}'
    engine = engine_answering(lambda request: httpx.Response(200, content=sse(first, failure)))
    with pytest.raises(EngineError, match="engine core died"):
        await collect(engine)


async def test_client_fault_reported_in_stream_is_a_rejection():
    failure = (
        b'{"error": {"message": "Grammar error: bad $ref", "type": "BadRequestError", "param": null, "code": 400}}'
    )
    engine = engine_answering(lambda request: httpx.Response(200, content=sse(failure, b"[DONE]")))
    with pytest.raises(EngineRejected, match="Grammar error"):
        await collect(engine)


async def test_unreadable_event_is_an_unavailable_engine():
    engine = engine_answering(lambda request: httpx.Response(200, content=sse(b"<html>")))
    with pytest.raises(EngineUnavailable):
        await collect(engine)


async def test_connection_failure_is_an_unavailable_engine():
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused")

    engine = engine_answering(refuse)
    with pytest.raises(EngineUnavailable):
        await collect(engine)
    assert await engine.check_health() is False


async def test_an_engine_that_goes_silent_fails_the_request_instead_of_hanging():
    """A real socket that accepts the request and never answers: the read timeout ends it."""

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(65536)
        await asyncio.sleep(3600)

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    engine = OpenAIEngine("e#0", f"http://127.0.0.1:{port}", "m", read_timeout_s=0.3)
    try:
        with pytest.raises(EngineUnavailable, match="Timeout"):
            await asyncio.wait_for(collect(engine), timeout=10)
    finally:
        await engine.stop()
        server.close()
