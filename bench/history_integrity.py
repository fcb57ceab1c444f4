"""What history integrity costs per step over a 50-step session, with the shipped rails and a real Redis.

Each step the client resends the whole conversation (a system prompt, then per turn a ~400-character user
message, every `--masked-every`th holding an e-mail address, and the assistant's ~300-character answer)
plus one new user message.
Side by side, per step:
  integrity   fingerprint every message, read in the round trip that loads the session whether it judged
              the history before the last assistant turn (one chain head) and which later messages it has
              seen, restore the masked ones, run the rails on the new message only, and record it at
              commit: what the gateway does
  judge all   run the rails on every message of the request, every step (the other way to close the
              made-up-history hole): grows with the session
  last turn   the rails on the messages after the last assistant turn only (the old, bypassable behaviour)

    .venv/bin/python bench/history_integrity.py [--steps 50] [--repeat 5]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gateway.steps.guard import Guard, load_rail_set  # noqa: E402
from gateway.steps.history import History, text_key  # noqa: E402
from gateway.stores.keys import KeyRecord  # noqa: E402
from gateway.stores.redis_server import EmbeddedRedis, connect_redis  # noqa: E402
from gateway.stores.sessions import SessionStore, Step  # noqa: E402
from protocol.openai import AssistantMessage, ChatCompletionRequest, SystemMessage, UserMessage  # noqa: E402

WORDS = "please check the quarterly report and the invoice from our supplier before the meeting".split()


def user_text(turn: int, masked_every: int) -> str:
    body = " ".join(WORDS[(turn + i) % len(WORDS)] for i in range(60))
    contact = f"person{turn}@example.com" if turn % masked_every == 0 else "the supplier"
    return f"Turn {turn}: {body}. Reply to {contact} when done."


def answer_text(turn: int) -> str:
    return f"Done for turn {turn}: " + " ".join(WORDS[(turn * 3 + i) % len(WORDS)] for i in range(45)) + "."


async def run(steps: int, repeat: int, masked_every: int) -> list[tuple[int, float, float, float]]:
    folder = Path(tempfile.mkdtemp(prefix="sentrail-bench-"))
    redis_server = EmbeddedRedis(folder)
    url = await redis_server.start()
    redis = connect_redis(url, 2.0)
    store = SessionStore(redis, 3600)
    guard = Guard(load_rail_set(ROOT / "policies" / "rails.yaml"))
    key = KeyRecord(key_id="bench", tenant="bench")
    timings: dict[int, dict[str, list[float]]] = {}
    try:
        for attempt in range(repeat):
            session = f"s{attempt}"
            messages: list = [SystemMessage("You are a careful assistant for the finance team.")]
            for step in range(1, steps + 1):
                messages.append(UserMessage(user_text(step, masked_every)))
                request = ChatCompletionRequest(model="m", messages=list(messages))
                row = timings.setdefault(step, {"integrity": [], "all": [], "last": []})

                started = time.perf_counter()
                history = History.of(request)
                pending = await store.begin(key, session, step == 1, history.lookups())
                resolved = history.resolve(pending.seen, pending.masked, pending.state.calls)
                pending.fresh = history.fresh
                judged, _ = await guard.inbound(resolved, history.fresh)
                pending.judged = history.records(judged)
                row["integrity"].append(time.perf_counter() - started)

                started = time.perf_counter()
                await guard.inbound(request, range(len(request.messages)))
                row["all"].append(time.perf_counter() - started)

                started = time.perf_counter()
                await guard.inbound(request, [len(request.messages) - 1])
                row["last"].append(time.perf_counter() - started)

                answer = answer_text(step)
                pending.judged[0][text_key(answer)] = ""  # what the gateway records for the text it emitted
                await store.commit(pending, Step(at=time.time(), request_id=f"r{step}", api="chat", model="m"), {})
                messages.append(AssistantMessage(content=answer))
    finally:
        await redis.aclose()
        await redis_server.stop()
    return [(step, *(statistics.median(row[kind]) * 1000 for kind in ("integrity", "all", "last")))
            for step, row in sorted(timings.items())]  # fmt: skip


def main(steps: int, repeat: int, masked_every: int) -> None:
    rows = asyncio.run(run(steps, repeat, masked_every))
    lines = [
        f"Inbound cost per step, ms (median of {repeat} sessions), shipped rails, embedded Redis, one process; "
        f"every {masked_every} user message(s) one holds an e-mail address (masked: the engine must get the masked "
        "text back each step, read from the session).",
        "`integrity` includes fingerprinting every message and loading the session (the reads go in that round trip).",
        "",
        "| step | messages sent | integrity (gateway) | judge all | last turn only (bypassable) | all / integrity |",
        "|---|---|---|---|---|---|",
    ]
    shown = sorted({1, 2, 5, 10, 20, 30, 40, steps} & set(range(1, steps + 1)))
    for step, integrity, every, last in rows:
        if step in shown:
            ratio = every / integrity
            lines.append(f"| {step} | {2 * step} | {integrity:.2f} | {every:.2f} | {last:.2f} | {ratio:.1f}x |")
    report = "\n".join(lines)
    print(report)
    (ROOT / "bench" / "results" / "history_integrity.md").write_text(report + "\n")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--masked-every", type=int, default=5, help="1: every user message holds PII")
    arguments = parser.parse_args()
    main(arguments.steps, arguments.repeat, arguments.masked_every)
