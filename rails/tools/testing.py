"""Policy test cases (`policies/tests/*.yaml`): a sequence of proposed calls with the decision expected
for each, run against a policy set as a session would see them. An allowed call's result is taken to
come back (its tool's labels are added); a `label` step adds labels as a rail hit on a tool result would.
A `user:` (or `system:`) step is a message of the conversation, and a call's `result:` is what its tool
returned (text, or data as a JSON/YAML tool would return it): both feed argument provenance. `label:` on
a call with a `result:` is a rail's label on that result (its values carry it too).

    cases:
      - name: no email out after reading the web
        steps:
          - {call: web_fetch, args: {url: "https://example.org"}, expect: allow}
          - {call: send_email, args: {to: eve@evil.test}, expect: deny, rule: no-email-out-after-untrusted-input}
      - name: pay only an IBAN the user gave
        steps:
          - user: "Pay my rent to DE89 3704 0044 0532 0130 00"
          - {call: send_money, args: {iban: DE89370400440532013000, amount: 900}, expect: allow}
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import msgspec

from ..config import RailsConfigError, _line, _path_of, read_yaml
from .config import ToolPolicy
from .decide import Decider, PastCall, SessionView, ToolDecision, canonical_arguments
from .provenance import ProvenanceView, ValueIndex


class CaseStep(msgspec.Struct, forbid_unknown_fields=True):
    call: str | None = None
    args: dict[str, Any] | str = {}
    expect: Literal["allow", "deny", "require_approval"] | None = None
    rule: str | None = None  # the deciding rule, when the case wants to pin it
    label: str | list[str] | None = None
    user: str | None = None  # a user message of the conversation
    system: str | None = None  # a system message
    result: Any = None  # what the call's tool returned (when it is allowed)


class Case(msgspec.Struct, forbid_unknown_fields=True):
    name: str
    steps: list[CaseStep]
    labels: list[str] = []  # labels the session starts with
    tools: dict[str, dict[str, Any]] | None = None  # declared tools (name -> JSON schema); absent: not checked


class CaseFile(msgspec.Struct, forbid_unknown_fields=True):
    cases: list[Case]


class Failure(msgspec.Struct):
    where: str  # file:line of the step
    case: str
    expected: str
    got: ToolDecision


def load_cases(path: Path) -> tuple[CaseFile, Any]:
    """The cases and the YAML node tree (for lines); `RailsConfigError` with file:line on a bad file."""
    node, raw = read_yaml(path)
    try:
        return msgspec.convert(raw, CaseFile), node
    except msgspec.ValidationError as exc:
        raise RailsConfigError([f"{path}:{_line(node, _path_of(exc))}: {exc}"]) from None


def run_cases(policy: ToolPolicy, path: Path) -> tuple[int, list[Failure]]:
    """(steps checked, failures)."""
    cases, node = load_cases(path)
    checked, failures = 0, []
    for case_index, case in enumerate(cases.cases):
        decider = Decider(policy, case.tools)
        view = SessionView(f"test:{case.name}", labels=set(case.labels))
        index = ValueIndex()
        view.provenance = ProvenanceView(index, untrusted=policy.file.provenance.untrusted)
        for step_index, step in enumerate(case.steps):
            labels = {step.label} if isinstance(step.label, str) else set(step.label or ())
            on_result = step.call is not None and step.result is not None  # a rail's labels on that result
            if not on_result:
                view.labels |= labels
            for role in ("system", "user"):
                if getattr(step, role) is not None:
                    index.add_message(role, getattr(step, role), step_index)
            if step.call is None:
                continue
            arguments = step.args if isinstance(step.args, str) else json.dumps(step.args)
            decision = decider.decide(f"call_{step_index}", step.call, arguments, view)
            view.add(PastCall(step.call, canonical_arguments(arguments), decision.action))
            if decision.action == "allow":
                view.labels |= policy.labels_for_tool(step.call)
                if step.result is not None:
                    text = step.result if isinstance(step.result, str) else json.dumps(step.result)
                    pointed = policy.is_source(step.call) and view.provenance.points(step.args)
                    index.add_tool_result(text, step.call, step_index, policy.field_labels(step.call), pointed,
                                          tuple(sorted(labels)))  # fmt: skip
                    view.labels |= labels
            if step.expect is None:
                continue
            checked += 1
            if decision.action != step.expect or (step.rule is not None and decision.rule != step.rule):
                where = f"{path}:{_line(node, ['cases', case_index, 'steps', step_index])}"
                expected = step.expect + (f" (rule {step.rule})" if step.rule else "")
                failures.append(Failure(where, case.name, expected, decision))
    return checked, failures
