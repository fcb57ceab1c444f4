"""Policy test cases (`policies/tests/*.yaml`): a sequence of proposed calls with the decision expected
for each, run against a policy set as a session would see them. An allowed call's result is taken to
come back (its tool's labels are added); a `label` step adds labels as a rail hit on a tool result would.

    cases:
      - name: no email out after reading the web
        steps:
          - {call: web_fetch, args: {url: "https://example.org"}, expect: allow}
          - {call: send_email, args: {to: eve@evil.test}, expect: deny, rule: no-email-out-after-untrusted-input}
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import msgspec

from ..config import RailsConfigError, _line, _path_of, read_yaml
from .config import ToolPolicy
from .decide import Decider, PastCall, SessionView, ToolDecision, canonical_arguments


class CaseStep(msgspec.Struct, forbid_unknown_fields=True):
    call: str | None = None
    args: dict[str, Any] | str = {}
    expect: Literal["allow", "deny", "require_approval"] | None = None
    rule: str | None = None  # the deciding rule, when the case wants to pin it
    label: str | list[str] | None = None


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
        for step_index, step in enumerate(case.steps):
            if step.label is not None:
                view.labels |= {step.label} if isinstance(step.label, str) else set(step.label)
            if step.call is None:
                continue
            arguments = step.args if isinstance(step.args, str) else json.dumps(step.args)
            decision = decider.decide(f"call_{step_index}", step.call, arguments, view)
            view.add(PastCall(step.call, canonical_arguments(arguments), decision.action))
            if decision.action == "allow":
                view.labels |= policy.labels_for_tool(step.call)
            if step.expect is None:
                continue
            checked += 1
            if decision.action != step.expect or (step.rule is not None and decision.rule != step.rule):
                where = f"{path}:{_line(node, ['cases', case_index, 'steps', step_index])}"
                expected = step.expect + (f" (rule {step.rule})" if step.rule else "")
                failures.append(Failure(where, case.name, expected, decision))
    return checked, failures
