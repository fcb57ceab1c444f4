"""The circuit breaker's accounting: failures are counted per incident, not per request (requests that
were already admitted when a failure was counted share it: one stall that times out many concurrent
requests is one failure), and request failures never take the last healthy engine of a model out:
it keeps serving, each request succeeding or failing on its own, and the active health check decides."""

import asyncio

import pytest

from engines.base import EngineUnavailable
from engines.pool import FAILURES_TO_OPEN, EnginePool
from protocol.openai import ChatCompletionRequest, UserMessage
from tests.doubles import ScriptedEngine

REQUEST = ChatCompletionRequest(model="m", messages=[UserMessage("hi")])


async def serve(pool: EnginePool, exclude: frozenset[str] = frozenset()) -> str:
    """One request as the chat step makes it: a slot, the engine's stream, its outcome reported to the pool."""
    async with pool.acquire("m", exclude=exclude) as engine:
        try:
            async for _ in engine.generate(REQUEST, "req"):
                pass
        except EngineUnavailable:
            pool.failed(engine)
            return "failed"
        pool.succeeded(engine)
        return "served"


async def test_concurrent_failures_from_one_stall_count_as_one_failure():
    stalled, spare = ScriptedEngine(name="stalled"), ScriptedEngine(name="spare")
    pool = EnginePool({"m": [(stalled, 32), (spare, 32)]})
    stalled.fail_at, stalled.delay_s = 1, 0.05  # every request hangs, then times out
    stalled.error = EngineUnavailable("no data from the engine for 120 s")
    outcomes = await asyncio.gather(*(serve(pool, exclude=frozenset({"spare"})) for _ in range(10)))
    assert outcomes == ["failed"] * 10
    replica = pool.replicas()["stalled"]
    assert replica.healthy and replica.failures == 1 and replica.errors == 10


async def test_a_stream_that_fails_in_the_task_sending_it_shares_the_incident():
    """A streamed answer is admitted in the handler's task and sent (and fails) in a task the server
    starts for it afterwards, as Litestar's `Stream` does: the failure still belongs to its request."""
    stalled, spare = ScriptedEngine(name="stalled"), ScriptedEngine(name="spare")
    pool = EnginePool({"m": [(stalled, 32), (spare, 32)]})
    admitted = asyncio.Event()

    async def streamed_request() -> None:
        async with pool.acquire("m", exclude=frozenset({"spare"})) as engine:

            async def send_stream() -> None:
                await admitted.wait()
                pool.failed(engine)  # the engine went silent mid-stream

            await asyncio.create_task(send_stream())

    requests = [asyncio.create_task(streamed_request()) for _ in range(8)]
    await asyncio.sleep(0.01)
    admitted.set()
    await asyncio.gather(*requests)
    replica = pool.replicas()["stalled"]
    assert replica.healthy and replica.failures == 1 and replica.errors == 8


async def test_failures_of_requests_admitted_after_the_last_counted_one_open_the_circuit():
    broken, spare = ScriptedEngine(name="broken"), ScriptedEngine(name="spare")
    broken.fail_at, broken.error = 0, EngineUnavailable("connection refused")
    pool = EnginePool({"m": [(broken, 4), (spare, 4)]})
    for attempt in range(FAILURES_TO_OPEN):
        assert pool.replicas()["broken"].healthy, attempt
        assert await serve(pool, exclude=frozenset({"spare"})) == "failed"
    assert not pool.replicas()["broken"].healthy
    for _ in range(4):
        async with pool.acquire("m") as engine:
            assert engine.name == "spare"


async def test_a_success_resets_the_count():
    flaky, spare = ScriptedEngine(name="flaky"), ScriptedEngine(name="spare")
    pool = EnginePool({"m": [(flaky, 4), (spare, 4)]})
    flaky.error = EngineUnavailable("connection reset")
    for _ in range(3):
        for fail_at in [0] * (FAILURES_TO_OPEN - 1) + [None]:
            flaky.fail_at = fail_at
            await serve(pool, exclude=frozenset({"spare"}))
    assert pool.replicas()["flaky"].healthy and pool.replicas()["flaky"].failures == 0


async def test_request_failures_never_take_out_the_only_engine():
    """The review's case: a few concurrent requests hang on the only engine and time out; the healthy
    requests after them must be served, not failed with 'no healthy engine' until the next check."""
    only = ScriptedEngine(name="only")
    pool = EnginePool({"m": [(only, 64)]})
    only.fail_at, only.delay_s, only.error = 1, 0.05, EngineUnavailable("no data from the engine")
    assert await asyncio.gather(*(serve(pool) for _ in range(5))) == ["failed"] * 5
    for _ in range(FAILURES_TO_OPEN + 2):  # even failures that each count
        assert await serve(pool) == "failed"
    assert pool.replicas()["only"].healthy
    only.fail_at, only.delay_s = None, 0.0  # the stall is over
    assert await asyncio.gather(*(serve(pool) for _ in range(30))) == ["served"] * 30
    assert pool.replicas()["only"].failures == 0


async def test_the_last_healthy_engine_is_held_while_the_others_are_out():
    a, b = ScriptedEngine(name="a"), ScriptedEngine(name="b")
    pool = EnginePool({"m": [(a, 4), (b, 4)]})
    a.fail_at = b.fail_at = 0
    a.error = b.error = EngineUnavailable("connection refused")
    for _ in range(FAILURES_TO_OPEN):
        await serve(pool, exclude=frozenset({"b"}))
    assert not pool.replicas()["a"].healthy  # b still serves: a is taken out
    for _ in range(FAILURES_TO_OPEN + 1):
        await serve(pool)
    assert pool.replicas()["b"].healthy  # the last one stays in
    b.fail_at = None
    assert await serve(pool) == "served"


async def test_a_failing_health_check_still_takes_the_only_engine_out():
    only = ScriptedEngine(name="only")
    pool = EnginePool({"m": [(only, 4)]})
    only.healthy = False
    assert await pool.readiness() == {"m": False}
    with pytest.raises(EngineUnavailable):
        async with pool.acquire("m"):
            pass
    only.healthy = True
    assert await pool.readiness() == {"m": True}
    assert await serve(pool) == "served"


async def test_a_failure_reported_outside_a_slot_counts():
    """Callers that report without holding a slot (a health probe of their own, a test) count each time."""
    flaky, steady = ScriptedEngine(name="flaky"), ScriptedEngine(name="steady")
    pool = EnginePool({"m": [(flaky, 4), (steady, 4)]})
    for _ in range(FAILURES_TO_OPEN):
        pool.failed(flaky)
    assert not pool.replicas()["flaky"].healthy


async def test_slots_and_leases_are_released_whatever_the_outcome():
    engine = ScriptedEngine(name="e", fail_at=0, error=EngineUnavailable("refused"))
    pool = EnginePool({"m": [(engine, 2)]}, max_waiting=8)
    await asyncio.gather(*(serve(pool) for _ in range(6)))
    replica = pool.replicas()["e"]
    assert replica.inflight == 0 and not replica.leases
    assert pool.load()["m"] == {"inflight": 0, "waiting": 0}
