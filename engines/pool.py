"""Models -> replicas, with admission control: bounded concurrency per replica, a bounded wait, and a
fast `Overloaded` beyond it (never an unbounded queue). Routing is least-outstanding among healthy
replicas.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field

import structlog

from .base import Engine, EngineUnavailable, Overloaded

log = structlog.get_logger("sentrail.pool")


@dataclass(eq=False)
class Replica:
    engine: Engine
    max_concurrency: int
    inflight: int = 0
    healthy: bool = True


@dataclass(eq=False)
class _Model:
    replicas: list[Replica]
    waiting: int = 0
    changed: asyncio.Condition = field(default_factory=asyncio.Condition)


class EnginePool:
    def __init__(
        self,
        models: Mapping[str, Sequence[tuple[Engine, int]]],
        max_waiting: int = 64,
        wait_timeout_s: float = 30.0,
    ) -> None:
        self._models = {
            model: _Model([Replica(engine, limit) for engine, limit in engines]) for model, engines in models.items()
        }
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
        results = await asyncio.gather(*(engine.stop() for engine in self.engines()), return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                log.warning("engine_stop_failed", error=repr(result))

    async def readiness(self) -> dict[str, bool]:
        """Per model: does at least one replica pass its health check now."""
        for model in self._models.values():
            checks = await asyncio.gather(*(r.engine.check_health() for r in model.replicas))
            for replica, ok in zip(model.replicas, checks, strict=True):
                replica.healthy = ok
        return {name: any(r.healthy for r in m.replicas) for name, m in self._models.items()}

    @contextlib.asynccontextmanager
    async def acquire(self, model_id: str) -> AsyncIterator[Engine]:
        """Hold a slot on the least-loaded healthy replica of `model_id` for the block's duration."""
        model = self._models[model_id]
        replica = await self._admit(model, model_id)
        try:
            yield replica.engine
        finally:
            replica.inflight -= 1
            async with model.changed:
                model.changed.notify()

    async def _admit(self, model: _Model, model_id: str) -> Replica:
        replica = _pick(model)
        if replica is not None:
            replica.inflight += 1
            return replica
        if not any(r.healthy for r in model.replicas):
            raise EngineUnavailable(f"no healthy engine for model {model_id!r}")
        if model.waiting >= self.max_waiting:
            raise Overloaded(f"model {model_id!r} is at capacity; retry shortly")
        model.waiting += 1
        try:
            async with model.changed:
                await asyncio.wait_for(model.changed.wait_for(lambda: _pick(model) is not None), self.wait_timeout_s)
                replica = _pick(model)
                assert replica is not None
                replica.inflight += 1
                return replica
        except TimeoutError:
            raise Overloaded(f"model {model_id!r} stayed at capacity for {self.wait_timeout_s:.0f} s") from None
        finally:
            model.waiting -= 1

    def load(self) -> dict[str, dict[str, int]]:
        """In-flight and waiting per model, for metrics."""
        return {
            name: {"inflight": sum(r.inflight for r in m.replicas), "waiting": m.waiting}
            for name, m in self._models.items()
        }


def _pick(model: _Model) -> Replica | None:
    open_replicas = [r for r in model.replicas if r.healthy and r.inflight < r.max_concurrency]
    return min(open_replicas, key=lambda r: r.inflight / r.max_concurrency, default=None)
