"""The step orchestration over a scripted engine and a real Redis: early stops abort the engine request
and free the slot; a client that leaves before a plain response is ready cancels the work."""

import asyncio

import pytest
import redis.asyncio as aioredis
from opentelemetry.trace import NoOpTracer

from engines.base import EngineUnavailable
from engines.pool import EnginePool
from gateway.errors import ClientDisconnected
from gateway.http.routes.chat import until_disconnect
from gateway.metrics import Metrics
from gateway.steps.chat import ChatService, StepContext
from gateway.stores.keys import DEV_KEY
from gateway.stores.ratelimit import RateLimiter
from gateway.stores.sessions import SessionStore
from protocol.openai import ChatCompletionRequest, UserMessage
from tests.doubles import ScriptedEngine, text_chunks


@pytest.fixture
async def make_service(redis_server):
    redis_server.flush()
    clients = []

    def make(*engines: ScriptedEngine) -> tuple[ChatService, EnginePool]:
        client = aioredis.Redis.from_url(redis_server.url)
        clients.append(client)
        pool = EnginePool({"m": [(engine, 1) for engine in engines]})
        return ChatService(pool, Metrics(), NoOpTracer(), SessionStore(client, 3600), RateLimiter(client)), pool

    yield make
    for client in clients:
        await client.aclose()


def ctx(request_id: str) -> StepContext:
    return StepContext(request_id, DEV_KEY, f"sess-{request_id}", True)


async def test_closing_a_stream_early_aborts_the_engine_request(make_service):
    engine = ScriptedEngine(text_chunks(*["tok"] * 50))
    service, pool = make_service(engine)
    request = ChatCompletionRequest(model="m", messages=[UserMessage("hi")], stream=True)
    events = await service.open_stream(request, ctx("req-1"))
    for _ in range(3):
        await anext(events)
    await events.aclose()
    assert engine.aborted == ["req-1"]
    assert pool.load()["m"] == {"inflight": 0, "waiting": 0}
    assert await service.sessions.load("dev", "sess-req-1") is None  # an abandoned step is not recorded


async def test_a_finished_stream_is_recorded_and_not_aborted(make_service):
    engine = ScriptedEngine()
    service, _ = make_service(engine)
    request = ChatCompletionRequest(model="m", messages=[UserMessage("hi")], stream=True)
    events = [e async for e in await service.open_stream(request, ctx("req-2"))]
    assert events[-1] == b"data: [DONE]\n\n"
    assert engine.aborted == []
    state = await service.sessions.load("dev", "sess-req-2")
    assert state is not None and state.steps == 1 and state.tokens_out == 2


async def test_plain_response_is_cancelled_when_the_client_disconnects(make_service):
    engine = ScriptedEngine(text_chunks(*["tok"] * 50), delay_s=0.05)
    service, pool = make_service(engine)
    request = ChatCompletionRequest(model="m", messages=[UserMessage("hi")])

    async def receive():
        await asyncio.sleep(0.1)
        return {"type": "http.disconnect"}

    with pytest.raises(ClientDisconnected):
        await until_disconnect(service.complete(request, ctx("req-3")), receive)
    for _ in range(100):  # let the cancelled work run its cleanup
        if engine.aborted:
            break
        await asyncio.sleep(0.01)
    assert engine.aborted == ["req-3"]
    assert pool.load()["m"]["inflight"] == 0


async def test_plain_response_is_returned_when_the_client_stays(make_service):
    service, _ = make_service(ScriptedEngine())
    request = ChatCompletionRequest(model="m", messages=[UserMessage("hi")])
    never = asyncio.Event()

    async def receive():
        await never.wait()

    result = await until_disconnect(service.complete(request, ctx("req-4")), receive)
    assert result.choices[0].message.content == "Hello world"


async def test_an_engine_that_fails_before_its_first_chunk_is_failed_over(make_service):
    broken = ScriptedEngine(fail_at=0, error=EngineUnavailable("connection refused"), name="broken")
    service, pool = make_service(broken, ScriptedEngine(name="well"))
    for number in range(12):  # whichever replica a session lands on, the answer comes from the healthy one
        completion = await service.complete(ChatCompletionRequest(model="m", messages=[UserMessage("hi")]),
                                            ctx(f"fo-{number}"))  # fmt: skip
        assert completion.choices[0].message.content == "Hello world"
    assert pool.replicas()["broken"].errors >= 1


async def test_an_engine_that_fails_mid_stream_is_not_retried(make_service):
    halfway = ScriptedEngine(fail_at=2, error=EngineUnavailable("engine died"), name="halfway")
    spare = ScriptedEngine(name="spare")
    service, pool = make_service(halfway, spare)
    pool.replicas()["spare"].healthy = False  # route the first attempt to the failing replica
    with pytest.raises(EngineUnavailable):
        await service.complete(ChatCompletionRequest(model="m", messages=[UserMessage("hi")]), ctx("mid"))
    assert spare.requests == []
