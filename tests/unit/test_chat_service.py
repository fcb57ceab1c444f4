"""The step orchestration: an early stop aborts the engine request and frees the slot."""

import asyncio

import pytest
from opentelemetry.trace import NoOpTracer

from engines.pool import EnginePool
from gateway.chat import ChatService
from gateway.errors import ClientDisconnected
from gateway.metrics import Metrics
from gateway.protocol import ChatCompletionRequest, UserMessage
from gateway.routes.chat import until_disconnect
from tests.doubles import ScriptedEngine, text_chunks


async def test_closing_a_stream_early_aborts_the_engine_request():
    engine = ScriptedEngine(text_chunks(*["tok"] * 50))
    pool = EnginePool({"m": [(engine, 1)]})
    service = ChatService(pool, Metrics(), NoOpTracer())
    request = ChatCompletionRequest(model="m", messages=[UserMessage("hi")], stream=True)
    events = await service.open_stream(request, "req-1")
    for _ in range(3):
        await anext(events)
    await events.aclose()
    assert engine.aborted == ["req-1"]
    assert pool.load()["m"] == {"inflight": 0, "waiting": 0}


async def test_a_finished_stream_is_not_aborted():
    engine = ScriptedEngine()
    service = ChatService(EnginePool({"m": [(engine, 1)]}), Metrics(), NoOpTracer())
    request = ChatCompletionRequest(model="m", messages=[UserMessage("hi")], stream=True)
    events = [e async for e in await service.open_stream(request, "req-2")]
    assert events[-1] == b"data: [DONE]\n\n"
    assert engine.aborted == []


async def test_plain_response_is_cancelled_when_the_client_disconnects():
    engine = ScriptedEngine(text_chunks(*["tok"] * 50), delay_s=0.05)
    pool = EnginePool({"m": [(engine, 1)]})
    service = ChatService(pool, Metrics(), NoOpTracer())
    request = ChatCompletionRequest(model="m", messages=[UserMessage("hi")])

    async def receive():
        await asyncio.sleep(0.1)
        return {"type": "http.disconnect"}

    with pytest.raises(ClientDisconnected):
        await until_disconnect(service.complete(request, "req-3"), receive)
    for _ in range(100):  # let the cancelled work run its cleanup
        if engine.aborted:
            break
        await asyncio.sleep(0.01)
    assert engine.aborted == ["req-3"]
    assert pool.load()["m"]["inflight"] == 0


async def test_plain_response_is_returned_when_the_client_stays():
    service = ChatService(EnginePool({"m": [(ScriptedEngine(), 1)]}), Metrics(), NoOpTracer())
    request = ChatCompletionRequest(model="m", messages=[UserMessage("hi")])
    never = asyncio.Event()

    async def receive():
        await never.wait()

    result = await until_disconnect(service.complete(request, "req-4"), receive)
    assert result.choices[0].message.content == "Hello world"
