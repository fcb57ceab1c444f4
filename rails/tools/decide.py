"""Deciding one proposed tool call against a policy set and what the session has done so far.

Order, first failure wins: the tool must be declared in the request; its arguments must be JSON and
match the tool's declared schema; the session's limits must hold; then the rules for the tool (exact
names and globs) are evaluated and the strictest enforced match decides: deny > require_approval >
allow; with no match, the file's `default`. Shadow rules are evaluated and recorded, never enforced.
A rule that cannot be evaluated counts as a deny (fail closed). The CEL context is built once per call.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import jsonschema
import msgspec

from .cel_runtime import CallState, RuleFailure, activation, bound, evaluate, evaluate_all
from .config import CompiledRule, ToolPolicy, ToolRules
from .provenance import ProvenanceView

STRENGTH = {"allow": 0, "require_approval": 1, "deny": 2}
Outcome = tuple[CompiledRule, bool, str, str]  # a rule, whether it matched, its action, why it failed or ""


class ToolDecision(msgspec.Struct, omit_defaults=True):
    """One proposed call's decision, as returned to clients and recorded in the session."""

    call_id: str
    tool: str
    action: str  # allow | deny | require_approval
    reason: str
    rule: str = ""  # the deciding rule; "" for checks before the rules and for the default
    policy_version: str = ""
    shadow: list[dict[str, str]] = []  # shadow rules that matched: {rule, action, reason}
    ticket: str | None = None  # for require_approval


@dataclass(slots=True)
class RuleResult:
    rule: str
    matched: bool
    action: str
    reason: str
    shadow: bool
    when: str | None


@dataclass
class PastCall:
    name: str
    arguments: str  # canonical JSON
    decision: str
    _record: dict[str, Any] | None = field(default=None, repr=False, compare=False)

    def record(self) -> dict[str, Any]:
        """As rules see it in `session.calls` (parsed once)."""
        if self._record is None:
            try:
                args = json.loads(self.arguments)
            except json.JSONDecodeError:
                args = {"value": self.arguments}
            self._record = {"name": self.name, "args": args, "decision": self.decision}
        return self._record


@dataclass
class SessionView:
    """What the rules may know of a session: its labels, step count and calls (allowed ones counted)."""

    session_id: str
    tenant: str = ""
    model: str = ""
    labels: set[str] = field(default_factory=set)
    steps: int = 0
    calls: list[PastCall] = field(default_factory=list)
    tool_counts: Counter[str] = field(default_factory=Counter)
    identical: Counter[tuple[str, str]] = field(default_factory=Counter)
    provenance: ProvenanceView = field(default_factory=ProvenanceView)  # where argument values came from

    @classmethod
    def build(cls, session_id: str, calls: Iterable[PastCall], **facts: Any) -> SessionView:
        view = cls(session_id, **facts)
        for call in calls:
            view.add(call)
        return view

    def add(self, call: PastCall) -> None:
        self.calls.append(call)
        if call.decision == "allow":
            self.tool_counts[call.name] += 1
            self.identical[(call.name, call.arguments)] += 1


def canonical(arguments: Any) -> str:
    return json.dumps(arguments, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def canonical_arguments(arguments: str) -> str:
    """Canonical JSON of a call's raw arguments (kept as written when they are not JSON)."""
    try:
        return canonical(json.loads(arguments or "{}"))
    except json.JSONDecodeError:
        return arguments


def parse_arguments(arguments: str) -> Any:
    """A call's raw arguments parsed (kept as written when they are not JSON)."""
    try:
        return json.loads(arguments or "{}")
    except json.JSONDecodeError:
        return arguments


def arguments_sha256(arguments: Any) -> str:
    return hashlib.sha256(canonical(arguments).encode()).hexdigest()


class Decider:
    """Decides calls for one policy set; `schemas` are the request's declared tools (name -> JSON schema)."""

    def __init__(self, policy: ToolPolicy, schemas: dict[str, dict[str, Any] | None] | None) -> None:
        self.policy = policy
        self.schemas = schemas

    def decide(self, call_id: str, tool: str, arguments: str, view: SessionView) -> ToolDecision:
        decision = self._decide(call_id, tool, arguments, view)
        decision.policy_version = self.policy.version
        return decision

    def _decide(self, call_id: str, tool: str, arguments: str, view: SessionView) -> ToolDecision:
        def deny(reason: str, rule: str = "") -> ToolDecision:
            return ToolDecision(call_id, tool, "deny", reason, rule)

        if self.schemas is not None and tool not in self.schemas:
            return deny(f"tool {tool!r} is not declared in the request's tools")
        try:
            args = json.loads(arguments or "{}")
        except json.JSONDecodeError as exc:
            return deny(f"arguments are not valid JSON: {exc.msg} at position {exc.pos}")
        schema = (self.schemas or {}).get(tool)
        if schema:
            problem = _schema_problem(schema, args)
            if problem:
                return deny(f"arguments do not match the tool's schema: {problem}")
        limits = self.policy.file.limits
        if limits.max_calls_per_session and sum(view.tool_counts.values()) >= limits.max_calls_per_session:
            return deny(f"limit: max_calls_per_session={limits.max_calls_per_session} reached", "limits")
        per_tool = limits.max_calls_per_tool.get(tool)
        if per_tool and view.tool_counts[tool] >= per_tool:
            return deny(f"limit: max_calls_per_tool[{tool}]={per_tool} reached", "limits")
        if limits.max_identical_calls and view.identical[(tool, canonical(args))] >= limits.max_identical_calls:
            return deny(f"limit: the same call was made {limits.max_identical_calls} times (loop?)", "limits")

        winner: ToolDecision | None = None
        shadow: list[dict[str, str]] = []
        for compiled, matched, action, failed in self._outcomes(call_id, tool, args, view):
            if not matched:
                continue
            rule = compiled.rule
            reason = failed or rule.reason or f"rule {rule.name}"
            if rule.shadow:
                shadow.append({"rule": rule.name, "action": action, "reason": reason})
            elif winner is None or STRENGTH[action] > STRENGTH[winner.action]:
                winner = ToolDecision(call_id, tool, action, reason, rule.name)
        if winner is None:
            default = self.policy.file.default
            winner = ToolDecision(call_id, tool, default, f"no rule matched; default {default}")
        winner.shadow = shadow
        return winner

    def evaluate(self, call_id: str, tool: str, args: Any, view: SessionView) -> list[RuleResult]:
        """Every rule for the tool, in file order, with whether it matched (what `explain` shows)."""
        return [RuleResult(c.rule.name, matched, action, failed or c.rule.reason or f"rule {c.rule.name}",
                           c.rule.shadow, c.rule.when)
                for c, matched, action, failed in self._outcomes(call_id, tool, args, view)]  # fmt: skip

    def _outcomes(self, call_id: str, tool: str, args: Any, view: SessionView) -> list[Outcome]:
        """(rule, matched, action, why it could not be evaluated or "") of every rule for the tool, in file
        order (tuples: a decision reads only the matched ones)."""
        rules = self.policy.rules_for(tool)
        context = None
        outcomes: list[Outcome] = []
        with bound(CallState(view.tool_counts, view.provenance, args)):
            values = iter(())  # every condition's value from one evaluation, when none of them failed
            if rules.program is not None:
                context = _context(call_id, tool, args, view, self.policy, rules)
                every = evaluate_all(rules.program, context) or []
                if len(every) == len(rules.rules):  # each rule has a condition and none failed (most calls)
                    return [(c, value is True, c.rule.action, "") for c, value in zip(rules.rules, every, strict=True)]
                values = iter(every)
            for compiled in rules.rules:
                rule = compiled.rule
                if compiled.program is None:
                    outcomes.append((compiled, True, rule.action, ""))
                    continue
                if (value := next(values, None)) is not None:
                    outcomes.append((compiled, value is True, rule.action, ""))
                    continue
                if context is None:
                    context = _context(call_id, tool, args, view, self.policy, rules)
                try:
                    outcomes.append((compiled, evaluate(compiled.program, context), rule.action, ""))
                except RuleFailure as exc:
                    why = f"rule {rule.name} could not be evaluated: {failure(exc, rule.when or '', args)}"
                    outcomes.append((compiled, True, "deny", why))
        return outcomes


def _context(call_id: str, tool: str, args: Any, view: SessionView, policy: ToolPolicy, rules: ToolRules) -> Any:
    """The CEL activation of one call, with only the variables the tool's rules read (converting a variable
    into CEL costs more than most rules do); the functions answer from the state `bound` to the call."""
    roots = rules.roots
    variables: dict[str, Any] = {
        "call": {"id": call_id, "name": tool, "args": args if isinstance(args, dict) else {"value": args}}
    }
    if "session" in roots:
        session: dict[str, Any] = {
            "id": view.session_id,
            "labels": sorted(view.labels),
            "steps": view.steps,
            "call_count": sum(view.tool_counts.values()),
        }
        if rules.reads_calls:
            recent = view.calls[-policy.file.history :] if policy.file.history else []
            session["calls"] = [c.record() for c in recent]
        variables["session"] = session
    if "request" in roots:
        variables["request"] = {"tenant": view.tenant, "model": view.model}
    return activation(variables)


_ARG = re.compile(r"call\.args\.([A-Za-z_]\w*)")
_MISSING = re.compile(r"Key not found in map : \"((?:[^\"\\]|\\.)*)\"")
_FAILED = re.compile(r"^(\w+\(\) failed: .*)$", re.DOTALL)
_CEL_TYPES = {str: "a string", bool: "a boolean", int: "an integer", float: "a number", list: "a list", dict: "a map"}


def failure(exc: Exception, when: str, args: Any) -> str:
    """Why a rule could not be evaluated, in the policy's terms: the argument that is missing or has a
    type the rule cannot use, not the runtime's message."""
    args = args if isinstance(args, dict) else {}
    message = str(exc)
    used = list(dict.fromkeys(_ARG.findall(when)))
    missing = [name for name in used if name not in args]
    found = _MISSING.search(message)
    if found is not None:
        key = found.group(1)
        if key in missing or (missing and key not in args):
            name = key if key in missing else missing[0]
            return f"the call has no argument {name!r} (test for it with has(call.args.{name}))"
        return f"the rule reads a field {key!r} that its value does not have"
    types = ", ".join(f"{name} is {_CEL_TYPES.get(type(args[name]), type(args[name]).__name__)}"
                      for name in used if name in args)  # fmt: skip
    suffix = f" ({types})" if types else ""
    if (failed := _FAILED.match(message)) is not None:
        return failed.group(1).strip() + suffix
    if "no matching overload" in message.lower():
        return "a value has a type the rule's operator or function does not take" + suffix
    return message + suffix


_validators: dict[str, jsonschema.protocols.Validator] = {}


def _schema_problem(schema: dict[str, Any], args: Any) -> str | None:
    key = canonical(schema)
    validator = _validators.get(key)
    if validator is None:
        cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
        try:
            cls.check_schema(schema)
        except jsonschema.SchemaError:
            return None  # the engine already accepted the request; an unusable schema checks nothing
        validator = _validators.setdefault(key, cls(schema))
        if len(_validators) > 1024:
            _validators.clear()
    error = jsonschema.exceptions.best_match(validator.iter_errors(args))
    if error is None:
        return None
    where = "/".join(str(p) for p in error.absolute_path)
    return f"{error.message}" + (f" at {where}" if where else "")
