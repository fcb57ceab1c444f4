import asyncio

import pytest

from engines.base import EngineUnavailable, Overloaded
from engines.pool import EnginePool
from tests.doubles import ScriptedEngine


async def test_routes_to_least_loaded_replica():
    a, b = ScriptedEngine(name="a"), ScriptedEngine(name="b")
    pool = EnginePool({"m": [(a, 2), (b, 2)]})
    async with pool.acquire("m") as first, pool.acquire("m") as second:
        assert {first.name, second.name} == {"a", "b"}
    assert pool.load()["m"] == {"inflight": 0, "waiting": 0}


async def test_full_pool_without_waiting_room_fails_fast():
    pool = EnginePool({"m": [(ScriptedEngine(), 1)]}, max_waiting=0)
    async with pool.acquire("m"):
        with pytest.raises(Overloaded):
            async with pool.acquire("m"):
                pass


async def test_waiter_gets_the_released_slot():
    pool = EnginePool({"m": [(ScriptedEngine(), 1)]}, max_waiting=1, wait_timeout_s=5)
    order = []

    async def hold():
        async with pool.acquire("m"):
            order.append("first")
            await asyncio.sleep(0.05)

    async def wait():
        await asyncio.sleep(0.01)
        async with pool.acquire("m"):
            order.append("second")

    await asyncio.gather(hold(), wait())
    assert order == ["first", "second"]


async def test_waiting_is_bounded_in_time():
    pool = EnginePool({"m": [(ScriptedEngine(), 1)]}, max_waiting=1, wait_timeout_s=0.05)
    async with pool.acquire("m"):
        with pytest.raises(Overloaded):
            async with pool.acquire("m"):
                pass
    assert pool.load()["m"]["waiting"] == 0


async def test_unhealthy_replicas_are_skipped_and_reported():
    sick, well = ScriptedEngine(name="sick", healthy=False), ScriptedEngine(name="well")
    pool = EnginePool({"m": [(sick, 4), (well, 4)], "n": [(ScriptedEngine(healthy=False), 4)]})
    assert await pool.readiness() == {"m": True, "n": False}
    async with pool.acquire("m") as engine:
        assert engine.name == "well"
    with pytest.raises(EngineUnavailable):
        async with pool.acquire("n"):
            pass
