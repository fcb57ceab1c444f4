"""Runs the rails of one stage over one piece of content.

Two phases, so that the result is deterministic and still concurrent where it can be:
1. rails that modify (maskers) run one after another, in configured order, each on the previous
   one's output — the composition is the configured order, never a race;
2. rails that only judge run concurrently on the modified text; the first block cancels the rest.
A rail that raises or times out blocks (fail closed). A rail in shadow mode is run and recorded, but
its block or modification is not applied. Every rail gets one `apply_guardrail {name}` span.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field

import msgspec
from opentelemetry.trace import NoOpTracer, Tracer

from .base import Action, Rail, Stage, Verdict


class Decision(msgspec.Struct, frozen=True):
    """One rail's verdict on one piece of content, as recorded and returned to clients."""

    rail: str
    stage: str
    action: str
    reason: str = ""
    shadow: bool = False


@dataclass(frozen=True)
class Configured:
    rail: Rail
    shadow: bool = False
    timeout_s: float = 2.0

    @property
    def modifies(self) -> bool:
        return bool(getattr(self.rail, "modifies", False))


@dataclass
class StageResult:
    content: str
    blocked: Decision | None = None
    decisions: list[Decision] = field(default_factory=list)

    @property
    def modified(self) -> bool:
        return any(d.action == Action.MODIFY and not d.shadow for d in self.decisions)


class RailPipeline:
    def __init__(self, rails: Sequence[Configured], tracer: Tracer | None = None, version: str = "") -> None:
        self.tracer = tracer or NoOpTracer()
        self.version = version  # the rails set's version, on every span
        self.by_stage: dict[Stage, list[Configured]] = {stage: [] for stage in Stage}
        for configured in rails:
            self.by_stage[configured.rail.stage].append(configured)

    async def aclose(self) -> None:
        """Release what rails hold (NeMo engines' HTTP sessions)."""
        for rails in self.by_stage.values():
            for configured in rails:
                close = getattr(configured.rail, "close", None)
                if close is not None:
                    await close()

    def has(self, stage: Stage) -> bool:
        return bool(self.by_stage[stage])

    async def run(self, stage: Stage, content: str) -> StageResult:
        result = StageResult(content)
        rails = self.by_stage[stage]
        for configured in (c for c in rails if c.modifies):
            verdict = await self._check(configured, stage, result.content)
            if self._record(configured, stage, verdict, result):
                return result
            if verdict.action == Action.MODIFY and not configured.shadow and verdict.content is not None:
                result.content = verdict.content
        judges = [c for c in rails if not c.modifies]
        if not judges:
            return result

        async def judged(configured: Configured) -> tuple[Configured, Verdict]:
            return configured, await self._check(configured, stage, result.content)

        tasks = [asyncio.ensure_future(judged(c)) for c in judges]
        try:
            for finished in asyncio.as_completed(tasks):
                configured, verdict = await finished
                if self._record(configured, stage, verdict, result):
                    return result
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)  # the cancelled rails have stopped
        order = {c.rail.name: i for i, c in enumerate(rails)}
        result.decisions.sort(key=lambda d: order.get(d.rail, len(order)))  # stable, configured order
        return result

    async def _check(self, configured: Configured, stage: Stage, content: str) -> Verdict:
        rail = configured.rail
        with self.tracer.start_as_current_span(f"apply_guardrail {rail.name}") as span:
            span.set_attribute("gen_ai.guardrail.name", rail.name)
            span.set_attribute("gen_ai.guardrail.policy.id", "rails.yaml")
            span.set_attribute("gen_ai.guardrail.policy.version", self.version)
            span.set_attribute("sentrail.rail.stage", stage.value)
            try:
                verdict = await asyncio.wait_for(rail.check(content), configured.timeout_s)
            except Exception as exc:  # fail closed: a rail that cannot decide blocks
                verdict = Verdict.block(f"rail {rail.name} failed: {type(exc).__name__}")
            span.set_attribute("gen_ai.guardrail.result", verdict.action.value)
            span.set_attribute("gen_ai.guardrail.reason", verdict.reason)
            span.set_attribute("sentrail.rail.shadow", configured.shadow)
        return verdict

    @staticmethod
    def _record(configured: Configured, stage: Stage, verdict: Verdict, result: StageResult) -> bool:
        """Add the decision; True when it blocks (and is enforced)."""
        if verdict.action == Action.ALLOW:
            return False
        decision = Decision(configured.rail.name, stage.value, verdict.action.value, verdict.reason, configured.shadow)
        result.decisions.append(decision)
        if verdict.action == Action.BLOCK and not configured.shadow:
            result.blocked = decision
            return True
        return False
