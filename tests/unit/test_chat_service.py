"""The step orchestration: an early stop aborts the engine request and frees the slot."""

from opentelemetry.trace import NoOpTracer

from engines.pool import EnginePool
from gateway.chat import ChatService
from gateway.metrics import Metrics
from gateway.protocol import ChatCompletionRequest, UserMessage
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
