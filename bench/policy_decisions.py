"""Tool-call policy decision latency: a 200-rule policy set over 50 tools, a session with a 500-call
history, per proposed call (p50/p99), side by side with a naive evaluator that runs every rule.

    .venv/bin/python bench/policy_decisions.py [--calls 5000]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import cel

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rails.tools.config import load_tool_policy  # noqa: E402
from rails.tools.decide import Decider, PastCall, SessionView, canonical  # noqa: E402

TOOLS = [f"tool_{i:02d}" for i in range(50)]
CONDITIONS = [
    "has(call.args.amount) && double(call.args.amount) > 100.0",
    '"untrusted" in session.labels && has(call.args.to) && email_domain(call.args.to) != "example.com"',
    'has(call.args.path) && !path_under(call.args.path, "/workspace")',
    'tool_count("tool_07") > 40',
]


def policy_file(history_rules: bool) -> str:
    rules = []
    for index in range(200):
        tool = TOOLS[index % len(TOOLS)] if index % 20 else "tool_4*"  # a few glob rules too
        when = CONDITIONS[index % len(CONDITIONS)]
        if history_rules and index % 50 == 0:
            when = 'session.calls.exists(c, c.name == "tool_07" && c.decision == "deny")'
        action = ("deny", "require_approval", "allow", "deny")[index % 4]
        rules.append(f"  - name: r{index}\n    tools: ['{tool}']\n    when: '{when}'\n    action: {action}\n")
    return "version: 1\ndefault: deny\nhistory: 50\nrules:\n" + "".join(rules)


def session() -> SessionView:
    rng = random.Random(7)
    calls = [PastCall(rng.choice(TOOLS), canonical({"amount": rng.randint(1, 500), "to": f"u{i}@example.com"}),
                      rng.choice(["allow", "allow", "deny"])) for i in range(500)]  # fmt: skip
    return SessionView.build("bench", calls, tenant="acme", model="m", labels={"untrusted", "internal"}, steps=250)


def timed(decide, calls: list[tuple[str, str]]) -> tuple[float, float]:
    timings = []
    for tool, arguments in calls:
        started = time.perf_counter()
        decide(tool, arguments)
        timings.append((time.perf_counter() - started) * 1000)
    timings.sort()
    return statistics.median(timings), timings[round(0.99 * (len(timings) - 1))]


def naive(policy_text: str, view: SessionView):
    """Every rule compiled once but evaluated on every call, with a fresh full context each time."""
    import yaml

    from rails.tools.decide import email_domain, path_under

    rules = [(r, cel.compile(r["when"])) for r in yaml.safe_load(policy_text)["rules"]]
    history = [{"name": c.name, "args": json.loads(c.arguments), "decision": c.decision} for c in view.calls]

    def decide(tool: str, arguments: str) -> str:
        context = cel.Context({"call": {"name": tool, "args": json.loads(arguments)},
                               "session": {"labels": sorted(view.labels), "calls": history,
                                           "tool_counts": dict(view.tool_counts)}})  # fmt: skip
        context.add_function("email_domain", email_domain)
        context.add_function("path_under", path_under)
        winner = "deny"
        for rule, program in rules:
            try:
                if program.execute(context) is True:
                    winner = rule["action"]
            except Exception:
                continue
        return winner

    return decide


def main(count: int) -> None:
    rng = random.Random(1)
    calls = [(rng.choice(TOOLS), json.dumps({"amount": rng.randint(1, 300), "to": "x@evil.test", "path": "/tmp/a"}))
             for _ in range(count)]  # fmt: skip
    view = session()
    lines = [f"200 rules over {len(TOOLS)} tools, a 500-call session history, {count} decisions each, one process.",
             "", "| evaluator | rules reading session.calls | p50 ms | p99 ms |", "|---|---|---|---|"]  # fmt: skip
    for history_rules in (False, True):
        text = policy_file(history_rules)
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "tools.yaml"
            path.write_text(text)
            policy = load_tool_policy(path)
        decider = Decider(policy, None)
        fast = timed(lambda tool, args, d=decider: d.decide("c", tool, args, view), calls)
        slow = timed(naive(text, view), calls[: max(50, count // 20)])
        label = "4 of 200" if history_rules else "none"
        lines.append(f"| Sentrail (indexed by tool, one context per call) | {label} | {fast[0]:.3f} | {fast[1]:.3f} |")
        lines.append(f"| naive (every rule, full context) | {label} | {slow[0]:.3f} | {slow[1]:.3f} |")
        lines.append(f"| ratio naive / Sentrail | {label} | {slow[0] / fast[0]:.0f}x | {slow[1] / fast[1]:.0f}x |")
    report = "\n".join(lines)
    print(report)
    (ROOT / "bench" / "results" / "policy_decisions.md").write_text(report + "\n")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=5000)
    main(parser.parse_args().calls)
