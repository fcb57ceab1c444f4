"""The inbound rails share the event loop: a request with many messages gives other tasks a turn every
`SLICE_S` of rail work instead of holding them until its last message is checked."""

import asyncio
import time

from gateway.steps.guard import SLICE_S, Guard, RailSet
from protocol.openai import ChatCompletionRequest, UserMessage
from rails.base import Stage, Verdict
from rails.pipeline import Configured, RailPipeline


class BusyRail:
    """A local rail that spends CPU without awaiting anything (a regex rail over a long text)."""

    name, stage, modifies, local = "busy", Stage.INPUT, False, True

    async def check(self, content):
        until = time.perf_counter() + SLICE_S / 4
        while time.perf_counter() < until:
            pass
        return Verdict.allow()


async def test_other_tasks_run_while_many_messages_are_checked():
    guard = Guard(RailSet(RailPipeline([Configured(BusyRail())])))
    messages = [UserMessage(f"message {i}") for i in range(200)]  # ~50 slices of rail work
    request = ChatCompletionRequest(model="m", messages=messages)
    ticks = 0

    async def other_client():
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    other = asyncio.create_task(other_client())
    await asyncio.sleep(0)
    before = ticks
    await guard.inbound(request, range(len(messages)))
    other.cancel()
    assert ticks - before >= 20  # it ran between slices, not once at the end
