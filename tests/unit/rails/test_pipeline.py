"""The rail pipeline: ordered masking, concurrent judging, first block cancels, fail closed, shadow, spans."""

import asyncio

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from rails.base import Stage, Verdict
from rails.pipeline import Configured, RailPipeline


class Rail:
    def __init__(self, name, verdict=None, delay=0.0, modifies=False, error=None, stage=Stage.INPUT):
        self.name, self.stage, self.modifies = name, stage, modifies
        self.verdict, self.delay, self.error = verdict or Verdict.allow(), delay, error
        self.seen, self.cancelled = [], False

    async def check(self, content):
        self.seen.append(content)
        try:
            await asyncio.sleep(self.delay)
        except asyncio.CancelledError:
            self.cancelled = True
            raise
        if self.error:
            raise self.error
        return self.verdict


class Upper(Rail):
    async def check(self, content):
        self.seen.append(content)
        return Verdict.modify(content + f"+{self.name}", "changed")


async def test_modifications_compose_in_configured_order_before_judges_run():
    first, second, judge = Upper("a", modifies=True), Upper("b", modifies=True), Rail("judge")
    result = await RailPipeline([Configured(second), Configured(first), Configured(judge)]).run(Stage.INPUT, "x")
    assert result.content == "x+b+a"
    assert judge.seen == ["x+b+a"]
    assert result.modified and result.blocked is None


async def test_first_block_cancels_the_slow_judges():
    slow = Rail("slow", delay=5)
    blocker = Rail("blocker", Verdict.block("bad"))
    result = await RailPipeline([Configured(slow), Configured(blocker)]).run(Stage.INPUT, "x")
    await asyncio.sleep(0)
    assert result.blocked.rail == "blocker" and result.blocked.reason == "bad"
    assert slow.cancelled


async def test_judges_run_concurrently():
    """Each rail waits until all five have started: only a concurrent run lets any of them finish."""
    started, everyone = [], asyncio.Event()

    class Meeting(Rail):
        async def check(self, content):
            started.append(self.name)
            if len(started) == 5:
                everyone.set()
            await everyone.wait()
            return Verdict.allow()

    rails = [Configured(Meeting(f"r{i}"), timeout_s=5) for i in range(5)]
    result = await RailPipeline(rails).run(Stage.INPUT, "x")
    assert result.blocked is None and len(started) == 5


async def test_a_failing_or_slow_rail_blocks():
    failing = Configured(Rail("broken", error=RuntimeError("boom")))
    stuck = Configured(Rail("stuck", delay=5), timeout_s=0.05)
    assert (await RailPipeline([failing]).run(Stage.INPUT, "x")).blocked.reason == "rail broken failed: RuntimeError"
    assert (await RailPipeline([stuck]).run(Stage.INPUT, "x")).blocked.reason == "rail stuck failed: TimeoutError"


async def test_shadow_rails_are_recorded_not_enforced():
    masker = Configured(Upper("m", modifies=True), shadow=True)
    blocker = Configured(Rail("b", Verdict.block("would block")), shadow=True)
    result = await RailPipeline([masker, blocker]).run(Stage.INPUT, "x")
    assert result.content == "x" and result.blocked is None and not result.modified
    assert [(d.rail, d.action, d.shadow) for d in result.decisions] == [("m", "modify", True), ("b", "block", True)]


async def test_stages_are_separate():
    pipeline = RailPipeline([Configured(Rail("out", Verdict.block("no"), stage=Stage.OUTPUT))])
    assert (await pipeline.run(Stage.INPUT, "x")).blocked is None
    assert (await pipeline.run(Stage.OUTPUT, "x")).blocked is not None
    assert pipeline.has(Stage.OUTPUT) and not pipeline.has(Stage.TOOL_RESULT)


async def test_one_span_per_rail_with_the_verdict():
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    rails = [Configured(Upper("mask", modifies=True)), Configured(Rail("deny", Verdict.block("nope")))]
    await RailPipeline(rails, provider.get_tracer("t")).run(Stage.INPUT, "x")
    spans = {s.name: s.attributes for s in exporter.get_finished_spans()}
    assert spans["apply_guardrail deny"]["gen_ai.guardrail.result"] == "block"
    assert spans["apply_guardrail deny"]["gen_ai.guardrail.reason"] == "nope"
    assert spans["apply_guardrail mask"]["gen_ai.guardrail.result"] == "modify"


async def test_local_rails_run_inline_before_the_others_and_a_block_skips_them():
    """A local rail's check runs in the caller's task (no task, no timeout); its block means the rails
    that wait on I/O are never started."""
    caller = asyncio.current_task()
    ran_in = []

    class Local(Rail):
        local = True

        async def check(self, content):
            ran_in.append(asyncio.current_task())
            return await super().check(content)

    remote = Rail("remote", delay=0.01)
    passing, blocking = Local("passes"), Local("blocks", Verdict.block("bad"))
    result = await RailPipeline([Configured(remote), Configured(passing), Configured(blocking)]).run(Stage.INPUT, "x")
    assert result.blocked.rail == "blocks"
    assert ran_in == [caller, caller]
    assert remote.seen == []
    passing_only = await RailPipeline([Configured(remote), Configured(passing)]).run(Stage.INPUT, "y")
    assert passing_only.blocked is None and remote.seen == ["y"]


async def test_a_local_rail_gets_a_span_only_for_a_decision_and_is_listed_when_it_allows():
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("t")

    class Local(Rail):
        local = True

    rails = [Configured(Local("fine")), Configured(Local("stop", Verdict.block("nope")))]
    with tracer.start_as_current_span("request"):
        await RailPipeline(rails, tracer).run(Stage.INPUT, "x")
    spans = {s.name: s for s in exporter.get_finished_spans()}
    assert "apply_guardrail fine" not in spans
    assert spans["request"].attributes["sentrail.rails.input.passed"] == ("fine",)
    stop = spans["apply_guardrail stop"]
    assert stop.attributes["gen_ai.guardrail.result"] == "block" and stop.start_time <= stop.end_time
    assert stop.parent.span_id == spans["request"].context.span_id


class Streaming(Rail):
    """A rail on streams that holds back its last `hold` characters and rewrites `x` to `y` when it modifies."""

    def __init__(self, name, hold=0, modifies=False, block_on=None, error=None):
        super().__init__(name, modifies=modifies, stage=Stage.OUTPUT, error=error)
        self.hold, self.block_on = hold, block_on

    def stream(self):
        rail = self

        class _Stream:
            def __init__(self):
                self.text, self.frontier = "", 0

            def feed(self, text, final=False):
                if rail.error:
                    raise rail.error
                self.text += text
                if rail.block_on and rail.block_on in self.text:
                    return "", Verdict.block(f"saw {rail.block_on}")
                end = len(self.text) if final else max(self.frontier, len(self.text) - rail.hold)
                out, self.frontier = self.text[self.frontier : end], end
                if rail.modifies and "x" in out:
                    return out.replace("x", "y"), Verdict.modify(out.replace("x", "y"), "x to y")
                return out, Verdict.allow()

        return _Stream()


def run_stream(stream, pieces):
    released, decisions = [], []
    for index, piece in enumerate([*pieces, ""]):
        result = stream.feed(piece, final=index == len(pieces))
        released.append(result.content)
        decisions += result.decisions
        if result.blocked:
            return released, decisions, result.blocked
    return released, decisions, None


def test_a_stage_streams_only_when_every_rail_can():
    assert (
        RailPipeline([Configured(Streaming("a")), Configured(Rail("b", stage=Stage.OUTPUT))]).stream(Stage.OUTPUT)
        is None
    )
    assert RailPipeline([Configured(Streaming("a"))]).stream(Stage.OUTPUT) is not None


def test_a_stream_releases_what_every_enforced_judge_decided_after_the_maskers():
    mask, judge, shadow = Streaming("mask", modifies=True, hold=1), Streaming("judge", hold=3), Streaming("s", hold=99)
    pipeline = RailPipeline([Configured(mask), Configured(judge), Configured(shadow, shadow=True)])
    released, decisions, blocked = run_stream(pipeline.stream(Stage.OUTPUT), ["abxcd", "efx"])
    assert blocked is None
    assert released == ["a", "byc", "defy"]  # the masker holds 1, the judge 3 of what the masker passed on
    assert [d.rail for d in decisions] == ["mask", "mask"]


def test_a_shadow_masker_on_a_stream_records_and_changes_nothing():
    pipeline = RailPipeline([Configured(Streaming("mask", modifies=True), shadow=True)])
    released, decisions, _ = run_stream(pipeline.stream(Stage.OUTPUT), ["axb"])
    assert "".join(released) == "axb" and decisions[0].shadow and decisions[0].action == "modify"


def test_a_stream_rail_that_blocks_or_fails_ends_the_stream():
    pipeline = RailPipeline([Configured(Streaming("deny", block_on="bad"))])
    released, _, blocked = run_stream(pipeline.stream(Stage.OUTPUT), ["good ", "ba", "d"])
    assert "".join(released) == "good ba" and blocked.reason == "saw bad"
    pipeline = RailPipeline([Configured(Streaming("broken", error=RuntimeError("boom")))])
    released, _, blocked = run_stream(pipeline.stream(Stage.OUTPUT), ["text"])
    assert released == [""] and blocked.reason == "rail broken failed: RuntimeError"  # fail closed
