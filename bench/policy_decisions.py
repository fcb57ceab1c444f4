"""Tool-call policy decision latency: a 200-rule policy set over 50 tools, a session with a 500-call
history, per proposed call (p50/p99), side by side with a naive evaluator that runs every rule; then with
a quarter of the rules reading argument provenance over a 500-step session holding 1 MB of tool output
(per call: the keys of its values, their origins from the session's index, the rules). Also the cost of
indexing one step's tool result, and the index's size.

    .venv/bin/python bench/policy_decisions.py [--calls 5000] [--baseline a01960d]

`--baseline REV` first runs that revision's own copy of this script (its `rails/` and `bench/`, extracted
with git archive, in a process of its own, on this environment) and prints both reports, before and now.
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.baseline import report  # noqa: E402
from rails.tools.cel_runtime import CallState, RuleFailure, activation, bound, compile_condition, evaluate  # noqa: E402
from rails.tools.config import load_tool_policy  # noqa: E402
from rails.tools.decide import Decider, PastCall, SessionView, canonical  # noqa: E402
from rails.tools.provenance import ProvenanceView, Texts, ValueIndex  # noqa: E402
from rails.tools.values import lookup_keys  # noqa: E402

TOOLS = [f"tool_{i:02d}" for i in range(50)]
CONDITIONS = [
    "has(call.args.amount) && double(call.args.amount) > 100.0",
    '"untrusted" in session.labels && has(call.args.to) && email_domain(call.args.to) != "example.com"',
    'has(call.args.path) && !path_under(call.args.path, "/workspace")',
    'tool_count("tool_07") > 40',
]


PROVENANCE = [
    "has(call.args.to) && !trusted(call.args.to)",
    'sinks(call.args).exists(s, tainted(s, "injection") && !from_user(s))',
    'has(call.args.path) && !user_pointed(call.args.path) && !user_mentions("delete")',
    'provenance(call.args.amount).exists(o, o.source == "tool" && "untrusted" in o.labels)',
]


def policy_file(history_rules: bool, provenance_rules: bool = False) -> str:
    rules = []
    for index in range(200):
        tool = TOOLS[index % len(TOOLS)] if index % 20 else "tool_4*"  # a few glob rules too
        when = CONDITIONS[index % len(CONDITIONS)]
        if provenance_rules and index % 4 == 1:
            when = PROVENANCE[(index // 4) % len(PROVENANCE)]
        if history_rules and index % 50 == 0:
            when = 'session.calls.exists(c, c.name == "tool_07" && c.decision == "deny")'
        action = ("deny", "require_approval", "allow", "deny")[index % 4]
        quoted = when.replace("'", "''")
        rules.append(f"  - name: r{index}\n    tools: ['{tool}']\n    when: '{quoted}'\n    action: {action}\n")
    return "version: 1\ndefault: deny\nhistory: 50\nrules:\n" + "".join(rules)


def session() -> SessionView:
    rng = random.Random(7)
    calls = [PastCall(rng.choice(TOOLS), canonical({"amount": rng.randint(1, 500), "to": f"u{i}@example.com"}),
                      rng.choice(["allow", "allow", "deny"])) for i in range(500)]  # fmt: skip
    return SessionView.build("bench", calls, tenant="acme", model="m", labels={"untrusted", "internal"}, steps=250)


def tool_output(rng: random.Random, step: int) -> str:
    """About 2 KB of YAML records, as an e-mail or banking tool returns them."""
    records = []
    for n in range(8):
        records.append(
            f"- id: '{step * 10 + n}'\n  sender: user{rng.randint(1, 900)}@example.com\n"
            f"  subject: Invoice {rng.randint(1000, 9999)} for order {rng.randint(1, 10**6)}\n"
            f"  amount: {rng.randint(1, 5000)}.{rng.randint(0, 99):02d}\n"
            f"  body: Please find attached the invoice. Pay to GB{rng.randint(10, 99)}NWBK{rng.randint(10**13, 10**14)}"
            f" before the due date, or visit https://billing{rng.randint(1, 50)}.example.net/pay/{rng.randint(1, 999)}"
            f" for details. Regards, the billing team of shop number {rng.randint(1, 999)}.\n"
        )
    return "".join(records)


def provenance_session() -> tuple[SessionView, ValueIndex, float, float]:
    """A 500-step session: a user message and one tool result (~2 KB) per step; the index as stored.
    Returns the view, the index, the total tool output in MB and the p99 ms to index one step."""
    rng = random.Random(3)
    view = session()
    index = ValueIndex()
    index.add_message("user", "Pay the invoices from billing to GB29NWBK60161331926819 and mail x@evil.test", 0)
    size, costs = 0, []
    for step in range(1, 501):
        index.add_message(
            "user",
            f"Thanks. Next, check invoice {rng.randint(1000, 9999)} from shop "
            f"{rng.randint(1, 999)} and tell me whether it was paid on time.",
            step,
        )
        text = tool_output(rng, step)
        size += len(text)
        started = time.perf_counter()
        index.add_tool_result(text, "read_inbox", step, lambda path: ("untrusted",) if path.endswith("body") else ())
        costs.append((time.perf_counter() - started) * 1000)
    costs.sort()
    return view, index, size / 1e6, costs[round(0.99 * (len(costs) - 1))]


def texts_build_ms(index: ValueIndex) -> float:
    """What the first phrase lookup of a step costs: the session's prompt texts are read once a step and
    searched through a word -> texts map built then (best of 5)."""
    costs = []
    for _ in range(5):
        texts = Texts(list(index.texts.lines))
        started = time.perf_counter()
        texts.find("no such phrase", whole=False)
        costs.append((time.perf_counter() - started) * 1000)
    return min(costs)


def per_function(view: SessionView, index: ValueIndex, count: int) -> list[str]:
    """What one rule costs by the provenance function it calls (the CEL program alone, the context built)."""
    rng = random.Random(5)
    rows = []
    for expression in ["has(call.args.to)", *PROVENANCE]:
        program, timings = compile_condition(expression), []
        for i in range(count):
            args = {"amount": rng.randint(1, 300), "to": f"u{i}@example.com", "path": f"/tmp/{i}",
                    "body": f"see https://x{i}.example.net/a"}  # fmt: skip
            keys = lookup_keys(args, {"delete"})
            provenance = ProvenanceView(ValueIndex({k: index.entries[k] for k in keys if k in index.entries},
                                                   index.texts))  # fmt: skip
            context = activation({"call": {"id": "c", "name": "t", "args": args}})
            with bound(CallState(provenance=provenance, args=args)):  # as a decision binds it
                started = time.perf_counter()
                program.eval(context)
                timings.append((time.perf_counter() - started) * 1000)
        timings.sort()
        p50, p99 = statistics.median(timings), timings[round(0.99 * (len(timings) - 1))]
        rows.append(f"| `{expression}` | {p50:.3f} | {p99:.3f} |")
    return rows


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

    rules = [(r, compile_condition(r["when"])) for r in yaml.safe_load(policy_text)["rules"]]
    history = [{"name": c.name, "args": json.loads(c.arguments), "decision": c.decision} for c in view.calls]

    def decide(tool: str, arguments: str) -> str:
        context = activation({"call": {"name": tool, "args": json.loads(arguments)},
                              "session": {"labels": sorted(view.labels), "calls": history,
                                          "tool_counts": dict(view.tool_counts)}})  # fmt: skip
        winner = "deny"
        with bound(CallState(view.tool_counts)):
            for rule, program in rules:
                try:
                    if evaluate(program, context):
                        winner = rule["action"]
                except RuleFailure:
                    continue
        return winner

    return decide


def baseline(revision: str, count: int) -> str:
    """Another revision's report, from its own code (so that the runtimes compare in one sitting)."""
    paths = ["rails", "bench/results", "bench/baseline.py"]
    commit, out = report(revision, "bench/policy_decisions.py", paths, ["--calls", str(count)])
    return f"## Before: {commit}\n\n{out}\n"


def main(count: int, before: str | None) -> None:
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
    view, index, megabytes, index_p99 = provenance_session()
    texts_ms = texts_build_ms(index)
    gc.freeze()  # the whole index lives in Redis in the gateway, not in its heap: keep it out of collections
    text = policy_file(False, provenance_rules=True)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "tools.yaml"
        path.write_text(text)
        policy = load_tool_policy(path)
    decider = Decider(policy, None)

    keys_ms: list[float] = []

    def with_provenance(tool: str, arguments: str) -> None:
        started = time.perf_counter()  # the keys of the call's values, and their origins (the gateway: one HMGET)
        keys = policy.lookup_keys([(tool, json.loads(arguments))])
        stored = ValueIndex({key: index.entries[key] for key in keys if key in index.entries}, index.texts)
        view.provenance = ProvenanceView(stored, untrusted=policy.file.provenance.untrusted)
        keys_ms.append((time.perf_counter() - started) * 1000)
        decider.decide("c", tool, arguments, view)

    values = [{"amount": rng.randint(1, 300), "to": f"u{i}@example.com", "path": f"/tmp/{i}",
               "body": f"see https://x{i}.example.net/a"} for i in range(count)]  # fmt: skip
    unique = [(rng.choice(TOOLS), json.dumps(v)) for v in values]  # values never seen before: no memoized keys
    fast = timed(with_provenance, unique)
    keys_ms.sort()
    key_p50, key_p99 = keys_ms[len(keys_ms) // 2], keys_ms[round(0.99 * (len(keys_ms) - 1))]
    lines += [
        f"| Sentrail, 50 of 200 rules read provenance, with the key lookup | none | {fast[0]:.3f} | {fast[1]:.3f} |",
        f"| of which the key lookup (the call's values -> their origins) | none | {key_p50:.3f} | {key_p99:.3f} |",
        "",
        f"Provenance index of the 500-step session: {megabytes:.2f} MB of tool output, {len(index):,} keys, "
        f"{len(index.texts.lines)} prompt texts searched by phrase (their word -> texts map: "
        f"{texts_ms:.2f} ms to build, once a step); "
        f"indexing one step's ~2 KB tool result: p99 {index_p99:.2f} ms (at step start, not per decision).",
        "",
        "One rule's evaluation by what it calls (same session; `provenance()` converts each origin into a CEL map:",
        "its cost grows with the value's origins, up to 8):",
        "",
        "| rule | p50 ms | p99 ms |",
        "|---|---|---|",
        *per_function(view, index, max(500, count // 2)),
    ]
    report = "\n".join(lines)
    if before is not None:
        head = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=ROOT, check=True, capture_output=True,
                              text=True).stdout.strip()  # fmt: skip
        report = f"{before}\n## Now: {head}\n\n{report}"
    print(report)
    (ROOT / "bench" / "results" / "policy_decisions.md").write_text(report + "\n")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=5000)
    parser.add_argument("--baseline", help="a git revision measured first, with its own code")
    args = parser.parse_args()
    main(args.calls, baseline(args.baseline, args.calls) if args.baseline else None)
