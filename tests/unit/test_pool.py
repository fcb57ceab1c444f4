import asyncio
import contextlib

import pytest

from engines.base import EngineUnavailable, Overloaded
from engines.pool import FAILURES_TO_OPEN, EnginePool
from engines.process import parse_cpus
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


async def test_a_session_sticks_to_its_replica_while_it_has_room():
    engines = [ScriptedEngine(name=f"e{i}") for i in range(3)]
    pool = EnginePool({"m": [(e, 2) for e in engines]})
    homes = set()
    for _ in range(5):
        async with pool.acquire("m", affinity="session-42") as engine:
            homes.add(engine.name)
    assert len(homes) == 1
    spread = set()
    for session in range(30):
        async with pool.acquire("m", affinity=f"s{session}") as engine:
            spread.add(engine.name)
    assert spread == {"e0", "e1", "e2"}  # sessions spread over the replicas
    (home,) = homes
    async with pool.acquire("m", affinity="session-42"), pool.acquire("m", affinity="session-42"):
        async with pool.acquire("m", affinity="session-42") as third:  # its replica is full: least loaded
            assert third.name != home


async def test_consecutive_failures_open_the_circuit_until_a_health_check_passes():
    flaky, steady = ScriptedEngine(name="flaky"), ScriptedEngine(name="steady")
    pool = EnginePool({"m": [(flaky, 4), (steady, 4)]})
    for _ in range(FAILURES_TO_OPEN):
        pool.failed(flaky)
    assert not pool.replicas()["flaky"].healthy
    for _ in range(4):
        async with pool.acquire("m") as engine:
            assert engine.name == "steady"
    assert await pool.readiness() == {"m": True}  # the check passes: back in rotation
    assert pool.replicas()["flaky"].healthy and pool.replicas()["flaky"].failures == 0


async def test_a_dead_managed_engine_is_restarted_with_backoff(monkeypatch):
    monkeypatch.setattr("engines.pool.RESTART_BACKOFF_S", (0.01,))

    class Crashing(ScriptedEngine):
        dead = True

        def exited(self) -> bool:
            return self.dead

        async def start(self) -> None:
            self.dead = False
            await super().start()

    engine = Crashing(name="crashy")
    pool = EnginePool({"m": [(engine, 1)]})
    pool.supervise()
    assert not pool.replicas()["crashy"].healthy
    await asyncio.sleep(0.1)
    replica = pool.replicas()["crashy"]
    assert replica.restarts == 1 and replica.healthy and engine.stopped and engine.started


async def test_weights_share_the_load():
    big, small = ScriptedEngine(name="big"), ScriptedEngine(name="small")
    pool = EnginePool({"m": [(big, 30, 2.0), (small, 30, 1.0)]})
    async with contextlib.AsyncExitStack() as stack:
        names = [(await stack.enter_async_context(pool.acquire("m"))).name for _ in range(9)]
    assert (names.count("big"), names.count("small")) == (6, 3)


def test_cpu_pinning_specs():
    assert parse_cpus("0") == {0} and parse_cpus("0-2,5") == {0, 1, 2, 5}
    with pytest.raises(ValueError):
        parse_cpus("3-1")


async def test_churn_never_oversubscribes_nor_loses_a_woken_waiter():
    """Many clients contend for few slots while replicas fail and come back: each either gets a slot
    (never more than max_concurrency per replica at once) or a clean Overloaded / EngineUnavailable.
    A waiter that was woken for a slot must get it, even when a newcomer arrives in the same instant."""
    a, b = ScriptedEngine(name="a"), ScriptedEngine(name="b")
    pool = EnginePool({"m": [(a, 2), (b, 1)]}, max_waiting=8, wait_timeout_s=0.5)
    replicas = pool.replicas()
    outcomes: dict[str, int] = {}

    async def client(index: int) -> None:
        for step in range(20):
            try:
                async with pool.acquire("m", affinity=f"s{index % 5}" if step % 2 else None) as engine:
                    replica = replicas[engine.name]
                    assert replica.inflight <= replica.max_concurrency
                    await asyncio.sleep(0 if step % 3 else 0.002)
                outcome = "served"
            except (Overloaded, EngineUnavailable) as exc:
                outcome = type(exc).__name__
            outcomes[outcome] = outcomes.get(outcome, 0) + 1

    async def flap() -> None:
        for _ in range(10):
            replicas["b"].healthy = False
            await asyncio.sleep(0.003)
            replicas["b"].healthy = True
            await pool.readiness()  # wakes waiters, as the health watcher does
            await asyncio.sleep(0.003)

    await asyncio.gather(flap(), *(client(i) for i in range(24)))
    assert outcomes["served"] > 100
    assert sum(outcomes.values()) == 24 * 20
    assert pool.load()["m"] == {"inflight": 0, "waiting": 0}


async def test_a_woken_waiter_keeps_the_slot_it_was_woken_for():
    """The race behind a 500 under failover: a slot frees, the waiter is woken for it, and a newcomer
    arrives in the same instant. Both must be served (one after the other), neither may crash."""
    pool = EnginePool({"m": [(ScriptedEngine(), 1)]}, max_waiting=1, wait_timeout_s=5)
    served = []

    async def client(name: str) -> None:
        async with pool.acquire("m"):
            served.append(name)
            await asyncio.sleep(0.01)

    holder = pool.acquire("m")
    await holder.__aenter__()
    waiter = asyncio.create_task(client("waiter"))
    await asyncio.sleep(0.01)  # the waiter is waiting for the only slot
    await holder.__aexit__(None, None, None)
    newcomer = asyncio.create_task(client("newcomer"))
    await asyncio.gather(waiter, newcomer)
    assert sorted(served) == ["newcomer", "waiter"]
