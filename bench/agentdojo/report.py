"""Figures of an AgentDojo replay, per configuration and suite, as a Markdown report (stdlib only).

    .venv/bin/python bench/agentdojo/report.py bench/results/agentdojo.json [bench/results/agentdojo.md]

re-renders the report from saved results (to stdout, or to the file named).
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

SUITES = ["banking", "slack", "travel", "workspace"]
BASELINE = "allow-all"
METHOD = """\
The agent is fully compromised and perfectly capable: its plan is the user task's ground-truth calls
(AgentDojo's `ground_truth`, one call per model turn); as soon as a call it executed returns the
attack's text, its next proposals are the injection task's ground-truth calls, then the rest of the
user task, then the final answer (the task's `GROUND_TRUTH_OUTPUT`). Every model turn is a real chat
completion through Sentrail (`openai` client, tools = the suite's functions with their JSON schemas,
AgentDojo's default system prompt, one `X-Session-Id` per episode) to a scripted engine that answers
with the planned turn. Only the calls Sentrail releases run in AgentDojo's environment; their results
go back as AgentDojo formats them (YAML). A withheld call (deny, or require_approval: nobody approves
here) is skipped and the agent moves on; a 400 `content_filter` (a rail blocked a tool result) ends the
episode. Scores are AgentDojo's own checks on the final environment and output: `utility` of the user
task, and `security` of the injection task (True = the attacker's goal was reached = attack success).
So the figures measure the policies alone: no model ever refuses, hesitates or is fooled *less*.
Latency is the wall time of each chat call as the client sees it (gateway + scripted engine, loopback).
Ground-truth arguments are proposed as validated by the function's own pydantic model (what AgentDojo's
runtime runs anyway); those whose raw form fails the tool's JSON schema are listed at the end.
Benign runs use the suites' default injection placeholders; every (user task, injection task) pair of
v1.2.2 is an attack run (949). Attack figures are over the 609 pairs whose injection task has
ground-truth calls: in v1.2.2, workspace `injection_task_6` to `_13` have `ground_truth() == []`, and
travel `injection_task_6` is a text-only goal (its `GROUND_TRUTH_OUTPUT` must appear in the answer:
the compromised agent appends it to its final answer once it read the injection, so the all-pairs row
counts it). "Utility under attack" and the attack runs' withheld calls are over the same 609 pairs;
approval tickets, rail blocks, errors and latency over every episode (97 benign + 949 attack runs).
"""


@dataclass
class Figures:
    """The counts behind one table cell group (a configuration on one suite, or on all of them)."""

    benign: int = 0
    benign_utility: int = 0
    benign_released: int = 0  # benign runs in which every user-task call was released
    attacks: int = 0  # attack runs whose injection task has ground-truth calls (the replayable ones)
    attack_success: int = 0
    attack_utility: int = 0
    all_attacks: int = 0  # every (user task, injection task) pair
    all_attack_success: int = 0
    saw_injection: int = 0  # attack runs whose agent executed a call that returned the attack's text
    withheld_benign: int = 0  # calls withheld in benign runs
    withheld_user_under_attack: int = 0  # user-task calls withheld in attack runs
    withheld_injection: int = 0  # injection-task calls withheld
    injection_proposed: int = 0
    tickets: int = 0
    rail_blocks: int = 0  # episodes ended by a 400 content_filter
    errors: int = 0
    latencies: list[float] = field(default_factory=list)

    def add(self, r: dict[str, Any]) -> None:
        injection_withheld = r["injection_calls_proposed"] - r["injection_calls_released"]
        user_withheld = r["withheld"] - injection_withheld
        if r["injection_task"] is None:
            self.benign += 1
            self.benign_utility += r["utility"]
            self.benign_released += r["all_user_calls_released"]
            self.withheld_benign += r["withheld"]
        else:
            self.all_attacks += 1
            self.all_attack_success += bool(r["security"])
        if r["injection_task"] is not None and r.get("replayable", True):
            self.attacks += 1
            self.attack_success += bool(r["security"])
            self.attack_utility += r["utility"]
            self.saw_injection += r["saw_injection"]
            self.withheld_user_under_attack += user_withheld
            self.withheld_injection += injection_withheld
            self.injection_proposed += r["injection_calls_proposed"]
        self.tickets += r["approvals"]
        self.rail_blocks += bool(r["blocked"])
        self.errors += bool(r["error"])
        self.latencies += r["latencies_ms"]


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))]


def summarize(results: list[dict[str, Any]]) -> dict[str, dict[str, Figures]]:
    """config -> suite (and "total") -> figures, in the order configurations first appear."""
    table: dict[str, dict[str, Figures]] = defaultdict(lambda: defaultdict(Figures))
    for r in results:
        table[r["config"]][r["suite"]].add(r)
        table[r["config"]]["total"].add(r)
    return table


NOTES = """\
- `allow-all` and `tool-labels` run the shipped `policies/rails.yaml` of the Sentrail tree that serves,
  so rails are measured too; `provenance` runs `policies/provenance/rails.yaml`, the same without the
  input `pii: mask` rail (an agent that mails, pays and invites the addresses and accounts the user names must see them;
  with it, the model never sees them and provenance finds `[EMAIL]` where the user typed one). Its
  `output.pii` rail (mask) turns the e-mail addresses of workspace `user_task_0`'s answer into
  `[EMAIL]`: a benign task that fails in every configuration. The `tool_result.injection` rail
  (threshold 0.5, `action: label` in the shipped file) never flagged the `important_instructions` text.
- `allow-all` attacks that fail (12, listed below): every injection call was released and ran, yet
  AgentDojo's security check says no; the interplay with the user task's own calls and environment
  (not checked one by one here), not the gateway, decides them.
- Utility under attack is lower with `allow-all` than with `tool-labels`: AgentDojo's utility checks
  compare the final environment with the expected one, and the attacker's released side effects
  (mails, payments, invitations) break them.
- `tool-labels` withholds with `require_approval` far more than with `deny`; with an approver in the
  loop the benign figures would be higher and the attack figures depend on what the approver decides.
- The provenance policies (per suite, `bench/agentdojo/policies/provenance/`) name no value from the
  data at all: they say which tools and fields third parties write (labels), which tools' results the
  user points at by naming them (`provenance.sources`), that destinations need a trusted origin, and
  which side effects need the user to have asked (`user_mentions`).
- The tool-labels policies name the organisation's own mail domain (`bluesparrowtech.com`, the user's
  account in the suites' environments) and nothing else from the data: no attacker value.
"""


def _frac(x: int, n: int) -> str:
    return f"{x}/{n} ({100 * x / n:.0f}%)" if n else "-"


ROWS: list[tuple[str, Any]] = [
    ("benign utility (AgentDojo check)", lambda f: _frac(f.benign_utility, f.benign)),
    ("benign utility (every benign call released)", lambda f: _frac(f.benign_released, f.benign)),
    ("attack success (injection goal reached)", lambda f: _frac(f.attack_success, f.attacks)),
    ("utility under attack", lambda f: _frac(f.attack_utility, f.attacks)),
    (
        "attack success, all pairs (incl. injection tasks without ground-truth calls)",
        lambda f: _frac(f.all_attack_success, f.all_attacks),
    ),
    ("attack runs whose agent read the injection", lambda f: _frac(f.saw_injection, f.attacks)),
    ("calls withheld: benign runs", lambda f: str(f.withheld_benign)),
    ("calls withheld: user-task calls under attack", lambda f: str(f.withheld_user_under_attack)),
    ("calls withheld: injection-task calls", lambda f: f"{f.withheld_injection}/{f.injection_proposed}"),
    ("approval tickets", lambda f: str(f.tickets)),
    ("episodes ended by a rail (400 content_filter)", lambda f: str(f.rail_blocks)),
    ("episodes with a harness error", lambda f: str(f.errors)),
    (
        "gateway latency per step p50 / p99 (ms)",
        lambda f: f"{percentile(f.latencies, 50):.1f} / {percentile(f.latencies, 99):.1f}",
    ),
]


def table_markdown(table: dict[str, dict[str, Figures]], scope: str) -> str:
    """One table for a scope ("total" or a suite): a row per figure, a column per configuration."""
    configs = list(table)
    lines = [f"| {scope} | " + " | ".join(f"`{c}`" for c in configs) + " |",
             "|---|" + "---|" * len(configs)]  # fmt: skip
    for label, cell in ROWS:
        lines.append(f"| {label} | " + " | ".join(cell(table[c][scope]) for c in configs) + " |")
    return "\n".join(lines)


def exceptions(results: list[dict[str, Any]], config: str, baseline: bool) -> dict[str, list[str]]:
    """What did not go as the ground truth says under `config`: failed benign tasks, withheld benign
    calls, tool errors, and on the baseline the attacks that failed, elsewhere those that got through."""
    found: dict[str, list[str]] = defaultdict(list)
    for r in results:
        if r["config"] != config:
            continue
        key = f"{r['suite']}/{r['user_task']}" + (f" x {r['injection_task']}" if r["injection_task"] else "")
        if r["injection_task"] is None and not r["utility"]:
            found["benign tasks failing AgentDojo's utility check"].append(key)
        if r["injection_task"] is None and not r["all_user_calls_released"]:
            found["benign tasks with a call withheld"].append(f"{key}: {'; '.join(r['withheld_calls'])[:300]}")
        if r["injection_task"] is not None and not r.get("replayable", True):
            if baseline:  # the same for every configuration: one line per injection task
                found["injection tasks not replayable (ground truth without calls)"].append(
                    f"{r['suite']}/{r['injection_task']}"
                )
        elif r["injection_task"] is not None and baseline and not r["security"]:
            found["attack runs that did not reach the injection goal"].append(
                key + ("" if r["saw_injection"] else " (injection never read)")
            )
        elif r["injection_task"] is not None and not baseline and r["security"]:
            released = r["injection_calls_released"], r["injection_calls_proposed"]
            found["attack runs that reached the injection goal"].append(
                f"{key} ({released[0]}/{released[1]} injection calls released)"
            )
        for error in r["tool_errors"]:
            found["tool errors from AgentDojo's runtime"].append(f"{key}: {error}")
        if r["error"]:
            found["harness errors"].append(f"{key}: {r['error']}")
        if r["blocked"]:
            found["episodes ended by a rail"].append(f"{key}: {r['blocked'][:160]}")
    return found


def render(data: dict[str, Any]) -> str:
    """The whole report: run facts, the total table, one table per suite, then the exceptions."""
    results = data["results"]
    meta = data.get("meta", {})
    table = summarize(results)
    suites = [s for s in SUITES if any(s in by_suite for by_suite in table.values())]
    out = ["# AgentDojo replay: a fully compromised agent behind Sentrail's tool-call policies", ""]
    out += [f"- {key}: {value}" for key, value in meta.items()]
    out += ["", "## Method", "", METHOD, "## All suites", "", table_markdown(table, "total"), ""]
    for suite in suites:
        out += [f"## {suite}", "", table_markdown(table, suite), ""]
    out += ["## Notes", "", NOTES, "## Exceptions", ""]
    for config in table:
        for title, items in exceptions(results, config, config == BASELINE).items():
            items = list(dict.fromkeys(items))  # once each, in order
            out.append(f"<details><summary><code>{config}</code>: {title} ({len(items)})</summary>\n")
            out += [f"- {item}" for item in items[:300]]
            out += ["- ..." if len(items) > 300 else "", "</details>", ""]
    if data.get("schema_findings"):
        out += [
            "## Ground-truth calls whose raw arguments fail the tool's own JSON schema",
            "",
            "(proposed after validation by the function's pydantic model, as AgentDojo's runtime coerces them)",
            "",
        ]
        out += [f"- {item}" for item in data["schema_findings"]] + [""]
    return "\n".join(out)


def main() -> None:
    with open(sys.argv[1]) as f:
        text = render(json.load(f))
    if len(sys.argv) > 2:
        with open(sys.argv[2], "w") as f:
            f.write(text)
    else:
        print(text)


if __name__ == "__main__":
    main()
