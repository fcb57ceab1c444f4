"""Runs the rails of one stage over one piece of content.

Two phases, so that the result is deterministic and still concurrent where it can be:
1. rails that modify (maskers) run one after another, in configured order, each on the previous
   one's output — the composition is the configured order, never a race;
2. rails that only judge run on the modified text: local ones (CPU only) inline, one after another,
   then the others concurrently; the first block stops or cancels the rest.
A rail that raises or times out blocks (fail closed). A rail in shadow mode is run and recorded, but
its block or modification is not applied. Every rail that waits on I/O gets one `apply_guardrail {name}`
span; a local rail gets one when it did not allow (block, modify, failure: with its real start and end),
and the local rails that allowed are listed on the current span (`sentrail.rails.{stage}.passed`): a span
per microsecond-scale check cost more than the check (nine spans per step with the shipped rails).

`stream` runs a stage on a text that arrives in pieces (a streamed answer), when every rail of it can
(`Rail.stream`): the maskers in file order as a chain, each passing on what it has decided, masked; the judges
side by side on the chain's output. What all enforced judges have decided is released, so the stage's
frontier is the earliest frontier of its rails, and the pieces released, put together, are the whole answer
as the stage would have rewritten it at once.

A rail with `action: label` that acts on a structured tool result (JSON or YAML) is asked where: the text of each
field (string leaf or mapping key, as provenance indexes them) is judged on its own by that rail, and the decision
names the fields that scored (`Decision.fields`), so that only the values from those fields carry the label. A
rail that reports where it scored (`Verdict.spans`) has only the fields inside those character ranges judged
again. When no single field scores (the detection needs text from several) or the result is not structured, the
decision has no fields and the label covers the whole result. It costs nothing until a label rail fires.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import msgspec
from opentelemetry import trace
from opentelemetry.trace import NoOpTracer, Tracer

from .base import Action, Rail, RailStream, Stage, Verdict
from .tools.provenance import structured, text_fields

OFF_LOOP_CHARS = 16_384  # a local rail checks a longer text in a worker thread
MAX_PLACED_FIELDS = 16_384  # a structured result with more text fields (keys included) is labelled as a whole
SLICE_S = 0.002  # placing a detection field by field gives the event loop a turn this often
AHEAD_CHARS = 64  # a judge looks into at most this much text the maskers hold (`StageStream._ahead`)


class Decision(msgspec.Struct, frozen=True):
    """One rail's verdict on one piece of content, as recorded and returned to clients."""

    rail: str
    stage: str
    action: str  # block | modify | label
    reason: str = ""
    shadow: bool = False
    label: str | None = None  # `action: label`: the label the detection adds
    message: int | None = None  # the request message it was about (input and tool_result stages)
    fields: tuple[str, ...] | None = None  # `action: label` on a structured tool result: the fields (JSON paths)
    # whose text scored, and only their values carry the label; None: the whole result


@dataclass(frozen=True)
class Configured:
    rail: Rail
    shadow: bool = False
    timeout_s: float = 2.0
    label: str | None = None  # detect-and-label: a block or rewrite becomes this label; the text passes

    @property
    def modifies(self) -> bool:
        return bool(getattr(self.rail, "modifies", False))

    @property
    def local(self) -> bool:
        return bool(getattr(self.rail, "local", False))


class Released(NamedTuple):
    """What a stage's rails let out of a stream for one piece: the text, the decisions the piece brought
    (rails that masked, labelled or blocked), and the block, if any."""

    content: str
    decisions: Sequence[Decision] = ()
    blocked: Decision | None = None


@dataclass
class StageResult:
    content: str
    blocked: Decision | None = None
    decisions: list[Decision] = field(default_factory=list)
    passed: list[str] = field(default_factory=list)  # local rails that allowed (no span of their own)
    labelled: list[tuple[Configured, Verdict]] = field(default_factory=list)  # label rails that fired

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

    def stream(self, stage: Stage) -> StageStream | None:
        """The stage's rails on a text that arrives in pieces; None when a rail cannot (it has no `stream`)."""
        streams = []
        for configured in self.by_stage[stage]:
            make = getattr(configured.rail, "stream", None)
            stream = make() if make is not None else None
            if stream is None:
                return None
            streams.append((configured, stream))
        return StageStream(self, stage, streams)

    async def run(self, stage: Stage, content: str) -> StageResult:
        result = await self._run(stage, content)
        if result.labelled and stage == Stage.TOOL_RESULT and result.blocked is None:
            await _place(result)
        if result.passed:
            trace.get_current_span().set_attribute(f"sentrail.rails.{stage.value}.passed", result.passed)
        return result

    async def _run(self, stage: Stage, content: str) -> StageResult:
        result = StageResult(content)
        rails = self.by_stage[stage]
        for configured in (c for c in rails if c.modifies):
            verdict = await self._check(configured, stage, result.content, result)
            if self._record(configured, stage, verdict, result):
                return result
            enforced = not (configured.shadow or configured.label)
            if verdict.action == Action.MODIFY and enforced and verdict.content is not None:
                result.content = verdict.content
        judges = []
        for configured in (c for c in rails if not c.modifies):
            if not configured.local:
                judges.append(configured)
            elif self._record(configured, stage, await self._check(configured, stage, result.content, result), result):
                return result
        if not judges:
            return _in_order(result, rails)

        async def judged(configured: Configured) -> tuple[Configured, Verdict]:
            return configured, await self._check(configured, stage, result.content, result)

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
        return _in_order(result, rails)

    async def _check(self, configured: Configured, stage: Stage, content: str, result: StageResult) -> Verdict:
        rail = configured.rail
        if configured.local:
            started = time.time_ns()
            verdict = await _verdict(configured, content)
            if verdict.action == Action.ALLOW:
                result.passed.append(rail.name)
            else:
                attributes = self._attributes(rail.name, stage)
                span = self.tracer.start_span(f"apply_guardrail {rail.name}", start_time=started, attributes=attributes)
                span.set_attributes(_outcome(configured, verdict))
                span.end()
            return verdict
        attributes = self._attributes(rail.name, stage)
        with self.tracer.start_as_current_span(f"apply_guardrail {rail.name}", attributes=attributes) as span:
            verdict = await _verdict(configured, content)
            span.set_attributes(_outcome(configured, verdict))
        return verdict

    def _attributes(self, name: str, stage: Stage) -> dict[str, str]:
        """A rail's span attributes (a local rail that passes has no span: its name is in `passed`)."""
        return {"gen_ai.guardrail.name": name, "gen_ai.guardrail.policy.id": "rails.yaml",
                "gen_ai.guardrail.policy.version": self.version, "sentrail.rail.stage": stage.value}  # fmt: skip

    @staticmethod
    def _record(configured: Configured, stage: Stage, verdict: Verdict, result: StageResult) -> bool:
        """Add the decision; True when it blocks (and is enforced)."""
        if verdict.action == Action.ALLOW:
            return False
        if configured.label is not None:
            result.labelled.append((configured, verdict))
            result.decisions.append(Decision(configured.rail.name, stage.value, "label", verdict.reason,
                                             configured.shadow, configured.label))  # fmt: skip
            return False
        decision = Decision(configured.rail.name, stage.value, verdict.action.value, verdict.reason, configured.shadow)
        result.decisions.append(decision)
        if verdict.action == Action.BLOCK and not configured.shadow:
            result.blocked = decision
            return True
        return False


class StageStream:
    """One stage's rails on one streamed text (`RailPipeline.stream`). `feed` takes the next piece and returns
    the text released (`content`), the decisions it brought and the block, if any; `final` ends the text."""

    def __init__(self, pipeline: RailPipeline, stage: Stage, streams: list[tuple[Configured, RailStream]]) -> None:
        self.pipeline, self.stage = pipeline, stage
        enforced = [(c, s, not (c.shadow or c.label)) for c, s in streams]  # others observe: the text passes
        self.maskers = [entry for entry in enforced if entry[0].modifies]
        self.judges = [entry for entry in enforced if not entry[0].modifies]
        self.enforced = [index for index, (_, _, enforced) in enumerate(self.judges) if enforced]
        self.decided = [0] * len(self.judges)  # characters of the chain's output each judge has decided
        self.held, self.released = "", 0  # the chain's output not released yet; how much was
        # Until the first text is out, the judges look into what the enforced maskers hold, when each can say what
        # it holds and how its masks start (`RailStream.peek`, `pending`, `lead`): the word a masker holds is then
        # no wait of the judges' own. That wait shows only in the time to the first text: after it, a word held
        # one token longer moves every later word by the same token and the client sees the engine's rate, so
        # the look (a few regex searches a piece) stops there.
        # in text order: the last masker holds the text right after what the judges got, the first the newest
        chain = [stream for _, stream, enforced in reversed(self.maskers) if enforced]
        leads = {getattr(stream, "lead", None) for stream in chain}
        self.chain = chain if chain and None not in leads and all(hasattr(s, "pending") for s in chain) else []
        self.leads = tuple(leads)
        self.peeks = [getattr(stream, "peek", None) for _, stream, _ in self.judges]

    def feed(self, text: str, final: bool = False) -> Released:
        noted: StageResult | None = None  # made only when a rail decides something (most pieces: none)
        for configured, stream, enforced in self.maskers:
            if not (text or final):  # nothing new: nothing can change (`feed` is for what arrived)
                break
            try:
                out, verdict = stream.feed(text, final)
            except Exception as exc:
                out, verdict = "", _failed(configured, exc)
            if verdict.action is not Action.ALLOW:
                noted = noted or StageResult("")
                if self._note(configured, verdict, noted):
                    return Released("", noted.decisions, noted.blocked)
            if enforced:
                text = out
        held = self.held + text
        decided = self.decided
        if text or final:
            for index, (configured, stream, _) in enumerate(self.judges):
                try:
                    out, verdict = stream.feed(text, final)
                except Exception as exc:
                    out, verdict = "", _failed(configured, exc)
                decided[index] += len(out)
                if verdict.action is not Action.ALLOW:
                    noted = noted or StageResult("")
                    if self._note(configured, verdict, noted):
                        self.held = held
                        return Released("", noted.decisions, noted.blocked)
        released = self.released
        cut = released + len(held)
        ahead = None  # what the maskers hold, read once when a judge waits
        for index in self.enforced:
            at = decided[index]
            if at < cut and not released and self.chain and not final:
                ahead = "".join(stream.pending for stream in self.chain) if ahead is None else ahead
                at = self._ahead(self.peeks[index], ahead, at, cut) if ahead else at
            if at < cut:
                cut = at
        cut = cut - released if cut > released else 0  # (a look ahead may have released past a judge's frontier)
        self.held = held[cut:]
        self.released = released + cut
        return Released(held[:cut], noted.decisions if noted is not None else (), None)

    def _ahead(self, peek: Callable[[str], int | None] | None, pending: str, floor: int, bound: int) -> int:
        """How far a judge at frontier `floor` is sure of the text, up to `bound`, whatever the maskers' `pending`
        text becomes. What comes next is `pending` as it is, or the start of it to some point where a mask
        begins (with one of `leads`), then anything: the judge's frontier on each of those beginnings (a frontier
        only moves on as text is added, so a beginning stands for everything that follows it)."""
        if peek is None or len(pending) > AHEAD_CHARS:
            return floor
        for k in range(len(pending)):
            for lead in self.leads:
                masked = peek(pending[:k] + lead)  # a mask starts at k
                if masked is None or masked <= floor:
                    return floor
                bound = min(bound, masked)
            plain = peek(pending[: k + 1])  # or the text goes on as it is: every later case begins so
            if plain is None:
                return floor
            if plain >= bound:
                return bound
        return max(floor, min(bound, plain))

    def _note(self, configured: Configured, verdict: Verdict, result: StageResult) -> bool:
        if verdict.action == Action.ALLOW:
            return False
        rail, now = configured.rail, time.time_ns()
        attributes = {**self.pipeline._attributes(rail.name, self.stage), **_outcome(configured, verdict)}
        self.pipeline.tracer.start_span(f"apply_guardrail {rail.name}", start_time=now, attributes=attributes).end()
        return RailPipeline._record(configured, self.stage, verdict, result)


def _failed(configured: Configured, exc: Exception) -> Verdict:
    """A rail that raised on a piece blocks (fail closed), as in `run`."""
    return Verdict.block(f"rail {configured.rail.name} failed: {type(exc).__name__}")


def _in_order(result: StageResult, rails: Sequence[Configured]) -> StageResult:
    """The decisions in configured order (stable), however the concurrent rails finished."""
    order = {c.rail.name: i for i, c in enumerate(rails)}
    result.decisions.sort(key=lambda d: order.get(d.rail, len(order)))
    return result


async def _verdict(configured: Configured, content: str) -> Verdict:
    """The rail's verdict; a rail that raises or runs out of time blocks (fail closed). A local rail (CPU
    work on the text) runs inline, or in a worker thread on a text longer than `OFF_LOOP_CHARS`, so that
    the event loop keeps serving other clients meanwhile."""
    rail = configured.rail
    try:
        checking = rail.check(content)
        if not configured.local:  # (`asyncio.timeout`: Python 3.11's `wait_for` can drop a cancellation)
            async with asyncio.timeout(configured.timeout_s):
                return await checking
        if len(content) > OFF_LOOP_CHARS:
            return await asyncio.to_thread(asyncio.run, checking)
        return await checking
    except Exception as exc:
        return Verdict.block(f"rail {rail.name} failed: {type(exc).__name__}")


async def _place(result: StageResult) -> None:
    """Name the fields of a structured tool result where each label rail scored (see the module docstring)."""
    data = structured(result.content)
    if data is None:
        return
    fields = list(text_fields(data))
    if not fields or len(fields) > MAX_PLACED_FIELDS:
        return
    for configured, verdict in result.labelled:
        candidates = _inside(fields, result.content, verdict.spans) if verdict.spans else fields
        scored = await _scoring(configured, candidates)
        if not scored and len(candidates) < len(fields):  # a field placed wrong (its text found elsewhere first)
            judged = {path for path, _ in candidates}
            scored = await _scoring(configured, [f for f in fields if f[0] not in judged])
        if not scored:
            continue
        trace.get_current_span().set_attribute(f"sentrail.rails.tool_result.fields.{configured.rail.name}", scored)
        shown = ", ".join(scored[:8]) + (f" and {len(scored) - 8} more" if len(scored) > 8 else "")
        for index, decision in enumerate(result.decisions):
            if decision.rail == configured.rail.name and decision.fields is None:
                reason = f"{decision.reason}; in {shown}"
                result.decisions[index] = msgspec.structs.replace(decision, reason=reason, fields=tuple(scored))
                break


def _inside(fields: list[tuple[str, str]], content: str, spans: tuple[tuple[int, int], ...]) -> list[tuple[str, str]]:
    """The fields whose text lies in one of the character ranges, or could not be found in the content (a YAML
    scalar folded over lines, a JSON string written with other escapes): those are judged too."""
    found, cursor = [], 0
    for path, text in fields:
        written = json.dumps(text, ensure_ascii=False)[1:-1]
        at = content.find(written, cursor)
        if at < 0:
            at, written = content.find(text, cursor), text
        if at < 0:
            found.append((path, text))
            continue
        cursor, end = at + len(written), at + len(written)
        if any(start < end and at < stop for start, stop in spans):
            found.append((path, text))
    return found


async def _scoring(configured: Configured, fields: list[tuple[str, str]]) -> list[str]:
    """The paths of the fields the rail would act on, each judged on its own text; [] when one check fails
    (the detection cannot be placed: the label covers the whole result)."""
    rail, texts = configured.rail, list(dict.fromkeys(text for _, text in fields if text.strip()))
    try:
        if configured.local:  # CPU checks inline, giving the event loop a turn every SLICE_S
            verdicts, started = [], time.perf_counter()
            for text in texts:
                verdicts.append(await rail.check(text))
                if time.perf_counter() - started > SLICE_S:
                    await asyncio.sleep(0)
                    started = time.perf_counter()
        else:
            async with asyncio.timeout(configured.timeout_s):
                verdicts = await asyncio.gather(*(rail.check(t) for t in texts))
    except Exception:
        return []
    acted = {text for text, verdict in zip(texts, verdicts, strict=True) if verdict.action != Action.ALLOW}
    return [path for path, text in fields if text in acted]


def _outcome(configured: Configured, verdict: Verdict) -> dict[str, str | bool]:
    return {"gen_ai.guardrail.result": verdict.action.value, "gen_ai.guardrail.reason": verdict.reason,
            "sentrail.rail.shadow": configured.shadow}  # fmt: skip
