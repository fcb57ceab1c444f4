"""Models -> replicas, with admission control: bounded concurrency per replica, a bounded wait, and a
fast `Overloaded` beyond it (never an unbounded queue).

Routing: a session's steps go to the same healthy replica while it has room (rendezvous hashing on
the session id, so the engine's prefix cache holds the session's history); otherwise, and for
requests without a session, to the least-loaded healthy replica. Health: active checks (`readiness`)
plus passive tracking (a circuit breaker): `FAILURES_TO_OPEN` consecutive failures take a replica
out (circuit open) until a health check passes. Failures count per incident, not per request: the
requests that were already admitted when a failure was counted share that failure (one stall that
times out thirty concurrent requests is one failure, not thirty), so only failures of requests
admitted after the previous one add up. Request failures never open the circuit of a model's last
healthy replica: taking it out would fail every request until the next check, healthy or not; it
keeps serving, each request succeeds or fails on its own (bounded by its read timeout and admission
control), and the active check, which still takes it out when it fails, decides. Managed engines
whose process died are restarted with exponential backoff (`supervise`).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import AsyncIterator, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field

import structlog

from .base import Engine, EngineUnavailable, Overloaded

log = structlog.get_logger("sentrail.pool")


Names = frozenset[str] | set[str]  # engine names
FAILURES_TO_OPEN = 3
RESTART_BACKOFF_S = (1.0, 2.0, 5.0, 10.0, 30.0, 60.0)
# The request's own admission number per replica, in its context: the tasks it starts after taking a
# slot (the one that sends a stream, for one) report failures for it. Never mutated: replaced.
_LEASES: ContextVar[Mapping[Replica, int] | None] = ContextVar("sentrail_engine_leases", default=None)


@dataclass(eq=False)
class Replica:
    engine: Engine
    max_concurrency: int
    weight: float = 1.0  # the share of requests it takes relative to its model's other replicas
    inflight: int = 0
    healthy: bool = True
    failures: int = 0  # consecutive failure incidents; FAILURES_TO_OPEN opens the circuit
    errors: int = 0  # failed requests
    admitted: int = 0  # requests admitted so far: each admission's sequence number
    fence: int = 0  # `admitted` when the last failure was counted: admissions up to it share that failure
    leases: set[int] = field(default_factory=set)  # admission numbers of the requests in flight
    restarts: int = 0
    restarting: asyncio.Task | None = None


@dataclass(eq=False)
class _Model:
    replicas: list[Replica]
    waiting: int = 0
    changed: asyncio.Condition = field(default_factory=asyncio.Condition)


class EnginePool:
    def __init__(
        self,
        models: Mapping[str, Sequence[tuple[Engine, int] | tuple[Engine, int, float]]],
        max_waiting: int = 64,
        wait_timeout_s: float = 30.0,
    ) -> None:
        self._models = {model: _Model([Replica(*spec) for spec in engines]) for model, engines in models.items()}
        self.max_waiting = max_waiting
        self.wait_timeout_s = wait_timeout_s

    @property
    def model_ids(self) -> list[str]:
        return list(self._models)

    def engines(self) -> list[Engine]:
        return [r.engine for m in self._models.values() for r in m.replicas]

    def engines_of(self, model_id: str) -> list[Engine]:
        model = self._models.get(model_id)
        return [r.engine for r in model.replicas] if model is not None else []

    async def start(self) -> None:
        await asyncio.gather(*(engine.start() for engine in self.engines()))

    async def stop(self) -> None:
        for replica in self.replicas().values():
            if replica.restarting is not None:
                replica.restarting.cancel()
        results = await asyncio.gather(*(engine.stop() for engine in self.engines()), return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                log.warning("engine_stop_failed", error=repr(result))

    async def readiness(self) -> dict[str, bool]:
        """Per model: does at least one replica pass its health check now. A passing check closes an
        open circuit; a failing one opens it."""
        for model in self._models.values():
            checks = await asyncio.gather(*(r.engine.check_health() for r in model.replicas))
            for replica, ok in zip(model.replicas, checks, strict=True):
                if ok and not replica.healthy:
                    log.info("engine_back", engine=replica.engine.name)
                replica.healthy = ok
                replica.failures = 0 if ok else replica.failures
            if any(r.healthy for r in model.replicas):
                async with model.changed:
                    model.changed.notify_all()
        return {name: any(r.healthy for r in m.replicas) for name, m in self._models.items()}

    def supervise(self) -> None:
        """Restart managed engines whose process died, with exponential backoff (not while stopping)."""
        for model in self._models.values():
            for replica in model.replicas:
                exited = getattr(replica.engine, "exited", None)
                if exited is not None and exited() and replica.restarting is None:
                    replica.healthy = False
                    delay = RESTART_BACKOFF_S[min(replica.restarts, len(RESTART_BACKOFF_S) - 1)]
                    replica.restarting = asyncio.create_task(self._restart(replica, delay))

    async def _restart(self, replica: Replica, delay_s: float) -> None:
        log.warning("engine_restarting", engine=replica.engine.name, in_s=delay_s, restarts=replica.restarts)
        try:
            await asyncio.sleep(delay_s)
            replica.restarts += 1
            await replica.engine.stop()
            await replica.engine.start()
            replica.failures, replica.healthy = 0, True
            log.info("engine_restarted", engine=replica.engine.name, restarts=replica.restarts)
        except Exception as exc:
            log.error("engine_restart_failed", engine=replica.engine.name, error=repr(exc))
        finally:
            replica.restarting = None

    def failed(self, engine: Engine) -> None:
        """Passive health: an engine failed a request (unreachable, crashed, broke off a stream). Called
        by the request that holds the slot (see the module's docstring for what counts)."""
        model, replica = self._find(engine)
        replica.errors += 1
        lease = _lease(replica)
        if lease is not None and lease <= replica.fence:
            return  # admitted before the last counted failure: the same incident
        replica.failures += 1
        replica.fence = replica.admitted
        if replica.failures < FAILURES_TO_OPEN or not replica.healthy:
            return
        if not any(r.healthy for r in model.replicas if r is not replica):
            if replica.failures == FAILURES_TO_OPEN:
                log.warning("engine_circuit_held", engine=engine.name, failures=replica.failures,
                            reason="last healthy engine of its model")  # fmt: skip
            return
        replica.healthy = False
        log.warning("engine_circuit_open", engine=engine.name, failures=replica.failures)

    def succeeded(self, engine: Engine) -> None:
        self._replica(engine).failures = 0

    def has_other(self, model_id: str, tried: set[str]) -> bool:
        """Is there a healthy replica of the model not in `tried` (engine names)?"""
        return _serving(self._models[model_id], tried)

    def _replica(self, engine: Engine) -> Replica:
        return self._find(engine)[1]

    def _find(self, engine: Engine) -> tuple[_Model, Replica]:
        return next((m, r) for m in self._models.values() for r in m.replicas if r.engine is engine)

    @contextlib.asynccontextmanager
    async def acquire(
        self, model_id: str, affinity: str | None = None, exclude: Names = frozenset()
    ) -> AsyncIterator[Engine]:
        """Hold a slot for the block's duration: on the session's replica (`affinity`) when it is healthy
        and has room, else on the least-loaded healthy replica; never on engines named in `exclude`."""
        model = self._models[model_id]
        replica = await self._admit(model, model_id, affinity, exclude)
        replica.admitted += 1
        lease = replica.admitted
        replica.leases.add(lease)
        _LEASES.set({**(_LEASES.get() or {}), replica: lease})
        try:
            yield replica.engine
        finally:
            replica.leases.discard(lease)
            replica.inflight -= 1
            await self._notify(model)

    async def _admit(self, model: _Model, model_id: str, affinity: str | None, exclude: Names) -> Replica:
        replica = _pick(model, affinity, exclude)
        if replica is not None:
            replica.inflight += 1
            return replica
        if not _serving(model, exclude):
            raise EngineUnavailable(f"no healthy engine for model {model_id!r}")
        if model.waiting >= self.max_waiting:
            raise Overloaded(f"model {model_id!r} is at capacity; retry shortly")
        taken: list[Replica] = []

        def take() -> bool:
            """Check and take a slot in one step: nothing else runs between the two."""
            free = _pick(model, affinity, exclude)
            if free is not None:
                free.inflight += 1
                taken.append(free)
            return free is not None or not _serving(model, exclude)

        model.waiting += 1
        try:
            async with asyncio.timeout(self.wait_timeout_s), model.changed:
                await model.changed.wait_for(take)
        except BaseException as exc:
            if taken:  # the wait ended (a timeout, a cancel) just as a slot was taken: give it back
                taken.pop().inflight -= 1
                await self._notify(model)
            if isinstance(exc, TimeoutError):
                raise Overloaded(f"model {model_id!r} stayed at capacity for {self.wait_timeout_s:.0f} s") from None
            raise
        finally:
            model.waiting -= 1
        if not taken:
            raise EngineUnavailable(f"no healthy engine for model {model_id!r}")
        return taken[0]

    async def _notify(self, model: _Model) -> None:
        """A slot came free: wake the longest waiter, who takes it. Not every waiter: under overload that
        is O(waiters) work per finished request. A waiter that cannot use the slot (it already tried that
        engine) sleeps on; the health watcher wakes everyone every few seconds (`readiness`)."""
        if not model.waiting:  # nobody to wake (a waiter counts itself before it first looks for a slot)
            return
        async with model.changed:
            model.changed.notify(1)

    def load(self) -> dict[str, dict[str, int]]:
        """In-flight and waiting per model, for metrics."""
        return {
            name: {"inflight": sum(r.inflight for r in m.replicas), "waiting": m.waiting}
            for name, m in self._models.items()
        }

    def replicas(self) -> dict[str, Replica]:
        """Engine name -> its replica state (in flight, health, errors, restarts), for metrics."""
        return {r.engine.name: r for m in self._models.values() for r in m.replicas}


def _lease(replica: Replica) -> int | None:
    """The admission number of the slot this request holds on the replica; None outside one."""
    lease = (_LEASES.get() or {}).get(replica)
    return lease if lease in replica.leases else None


def _serving(model: _Model, exclude: Names) -> bool:
    return any(r.healthy and r.engine.name not in exclude for r in model.replicas)


def _pick(model: _Model, affinity: str | None = None, exclude: Names = frozenset()) -> Replica | None:
    open_replicas = [
        r for r in model.replicas if r.healthy and r.inflight < r.max_concurrency and r.engine.name not in exclude
    ]
    if not open_replicas:
        return None
    if affinity is not None:
        healthy = [r for r in model.replicas if r.healthy and r.engine.name not in exclude]
        home = max(healthy, key=lambda r: _score(affinity, r.engine.name))
        if home in open_replicas:
            return home
    return min(open_replicas, key=lambda r: (r.inflight / r.weight, r.inflight / r.max_concurrency))


def _score(key: str, name: str) -> bytes:
    """Rendezvous hashing: each session ranks the replicas the same way on every gateway replica."""
    return hashlib.blake2b(f"{key}\0{name}".encode(), digest_size=8).digest()
