"""Tool-call policy files (`policies/tools.yaml`): rules per tool with CEL conditions, labels, limits.

Loading compiles every CEL expression once and checks the names it uses, and reports every error at
once with file:line (and, for CEL, the line and column inside the expression); nothing half-valid is
ever returned. The version is a SHA-256 over the file's bytes.
"""

from __future__ import annotations

import fnmatch
import hashlib
import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec
import yaml

from ..config import RailsConfigError, _line, _path_of, read_yaml
from .cel_runtime import PROVENANCE_FUNCTIONS, ROOTS, compile_all, compile_condition
from .provenance import field_shape
from .values import lookup_keys

Action = Literal["allow", "deny", "require_approval"]
_MENTIONS = re.compile(r"user_mentions\(([^)]*)\)")
_LITERAL = re.compile(r"\"((?:[^\"\\]|\\.)*)\"|'((?:[^'\\]|\\.)*)'")
_NAME = re.compile(r"(?<![\w.])([A-Za-z_]\w*)\s*(\()?")
_ASKED = re.compile(
    rf"(?<![\w.])({'|'.join(sorted(PROVENANCE_FUNCTIONS))})\s*\(\s*"
    r"(?:call\s*\.\s*args\s*\.\s*([A-Za-z_]\w*)(?=\s*[,).\[]))?"
)
_CEL_POSITION = re.compile(r"<input>:(\d+):(\d+): (.*?)(?:\n|$)")


class Rule(msgspec.Struct, forbid_unknown_fields=True):
    name: Annotated[str, msgspec.Meta(min_length=1)]
    tools: list[str]  # names or globs (`send_*`, `*`)
    action: Action
    when: str | None = None  # a CEL expression over call, session, request; absent: always
    reason: str = ""
    shadow: bool = False  # evaluated and recorded, never enforced


class Labels(msgspec.Struct, forbid_unknown_fields=True):
    tools: dict[str, list[str]] = {}  # tool name or glob -> labels its results add to the session
    rails: dict[str, str] = {}  # rail name or glob -> the label a rail decision on a tool result adds
    # tool name or glob -> {field pattern -> labels}: the labels of the values of that field of the tool's
    # structured results, instead of the tool's (`transactions.subject`, `*.description`; [] = no label)
    fields: dict[str, dict[str, list[str]]] = {}


class ProvenanceSpec(msgspec.Struct, forbid_unknown_fields=True):
    # tools (names or globs) whose result the user points at by naming it in an argument (a file, a URL, a
    # channel): a result of such a call whose arguments came from the user's messages is `user_pointed`
    sources: list[str] = []
    # labels that make a value's origin untrusted (a tool result or field carrying one)
    untrusted: list[str] = msgspec.field(default_factory=lambda: ["untrusted", "injection", "policy_bypass"])


class BypassSpec(msgspec.Struct, forbid_unknown_fields=True):
    """A tool result answering a call Sentrail denied, withheld or never emitted in the session."""

    label: str = "policy_bypass"  # added to the session and to the values of that result
    action: Literal["label", "block"] = "label"  # block: the request is refused (400 policy_violation)


class UnverifiedTurns(msgspec.Struct, forbid_unknown_fields=True):
    """An assistant turn in a request that Sentrail never emitted in the session (made up or edited by the
    client, or the history of a conversation that started elsewhere): judged by the input rails anyway."""

    label: str = "unverified_history"  # added to the session
    action: Literal["label", "block"] = "label"  # block: the request is refused (400 policy_violation)


class Limits(msgspec.Struct, forbid_unknown_fields=True):
    max_calls_per_session: Annotated[int, msgspec.Meta(ge=0)] = 0  # 0: no limit
    max_calls_per_tool: dict[str, Annotated[int, msgspec.Meta(ge=1)]] = {}
    max_identical_calls: Annotated[int, msgspec.Meta(ge=0)] = 0  # same tool, same arguments


class PolicyFile(msgspec.Struct, forbid_unknown_fields=True):
    version: Literal[1] = 1
    default: Action = "deny"
    history: Annotated[int, msgspec.Meta(ge=0, le=1000)] = 50  # recent calls visible as session.calls
    approval_ttl_s: Annotated[int, msgspec.Meta(ge=1)] = 3600  # how long an approval ticket can be decided
    labels: Labels = msgspec.field(default_factory=Labels)
    provenance: ProvenanceSpec = msgspec.field(default_factory=ProvenanceSpec)
    bypass: BypassSpec = msgspec.field(default_factory=BypassSpec)
    unverified_turns: UnverifiedTurns = msgspec.field(default_factory=UnverifiedTurns)
    limits: Limits = msgspec.field(default_factory=Limits)
    rules: list[Rule] = []


class CompiledRule(msgspec.Struct, frozen=True):
    rule: Rule
    program: Any  # cel.Program | None
    reads_calls: bool  # the expression looks at session.calls (the history is built only then)
    reads_provenance: bool = False  # it calls a provenance function (registered in the context only then)
    roots: frozenset[str] = frozenset(ROOTS)  # the variables it reads (call, session, request): only those are built
    asks: frozenset[str] | None = None  # the arguments its provenance functions ask about; None: any value


class ToolRules(msgspec.Struct, frozen=True):
    """The rules for one tool, in file order, and what they read (worked out once per tool, not per call)."""

    rules: list[CompiledRule]
    roots: frozenset[str]  # the CEL variables some rule reads
    reads_calls: bool  # some rule reads session.calls
    reads_provenance: bool  # some rule calls a provenance function
    program: Any = None  # every condition in one program (two or more): one evaluation per call
    asks: frozenset[str] | None = None  # the arguments whose values' origins rules ask about; None: all of them

    @classmethod
    def of(cls, rules: list[CompiledRule]) -> ToolRules:
        conditions = [r.rule.when for r in rules if r.program is not None and r.rule.when is not None]
        asking = [r for r in rules if r.reads_provenance]
        asks = None if any(r.asks is None for r in asking) else frozenset().union(*(r.asks or () for r in asking))
        return cls(rules, frozenset().union(*(r.roots for r in rules)), any(r.reads_calls for r in rules),
                   any(r.reads_provenance for r in rules),
                   compile_all(conditions) if len(conditions) > 1 else None, asks)  # fmt: skip


class ToolPolicy(msgspec.Struct, frozen=True):
    """A loaded policy set: rules indexed by exact tool name, plus the glob rules, in file order."""

    file: PolicyFile
    version: str
    exact: dict[str, list[tuple[int, CompiledRule]]]
    globs: list[tuple[int, CompiledRule]]
    mentions: frozenset[str] = frozenset()  # the literal words rules ask `user_mentions` about (prefetched)
    reads_provenance: bool = False  # some rule calls a provenance function: the session's values are indexed
    resolved: dict[str, ToolRules] = msgspec.field(default_factory=dict)  # tool -> its rules, memoized

    def rules_for(self, tool: str) -> ToolRules:
        rules = self.resolved.get(tool)
        if rules is None:
            found = self.exact.get(tool, []) + [(i, r) for i, r in self.globs if _glob_match(r.rule.tools, tool)]
            rules = ToolRules.of([rule for _, rule in sorted(found, key=lambda item: item[0])])
            if len(self.resolved) < 10_000:  # bounded: tool names come from the model
                self.resolved[tool] = rules
        return rules

    def lookup_keys(self, calls: Iterable[tuple[str, Any]]) -> set[str]:
        """The provenance index keys deciding these (tool, parsed arguments) calls may read, fetched in one
        read before deciding; none for a tool whose rules ask nothing about provenance."""
        keys: set[str] = set()
        for tool, args in calls:
            rules = self.rules_for(tool)
            if not rules.reads_provenance:
                continue
            if rules.asks is not None and isinstance(args, dict) and not self.is_source(tool):
                args = {name: value for name, value in args.items() if name in rules.asks}  # only those are asked
            keys |= lookup_keys(args, self.mentions)
        return keys

    def labels_for_tool(self, tool: str) -> set[str]:
        return {label for pattern, labels in self.file.labels.tools.items() if fnmatch.fnmatchcase(tool, pattern)
                for label in labels}  # fmt: skip

    def field_labels(self, tool: str) -> Callable[[str], tuple[str, ...]]:
        """Path -> labels of that field of the tool's results: the first matching `labels.fields`
        pattern's, else the tool's own."""
        own = tuple(sorted(self.labels_for_tool(tool)))
        patterns = [(pattern, tuple(sorted(labels))) for glob, fields in self.file.labels.fields.items()
                    if fnmatch.fnmatchcase(tool, glob) for pattern, labels in fields.items()]  # fmt: skip
        if not patterns:
            return lambda path: own

        def labels(path: str) -> tuple[str, ...]:
            shape = field_shape(path)
            return next((found for pattern, found in patterns if fnmatch.fnmatchcase(shape, pattern)), own)

        return labels

    def is_source(self, tool: str) -> bool:
        """The user can point at this tool's results (`provenance.sources`)."""
        return any(fnmatch.fnmatchcase(tool, pattern) for pattern in self.file.provenance.sources)

    def label_for_rail(self, rail: str) -> str | None:
        return next((lb for pattern, lb in self.file.labels.rails.items() if fnmatch.fnmatchcase(rail, pattern)), None)


def _glob_match(patterns: list[str], tool: str) -> bool:
    return any(fnmatch.fnmatchcase(tool, p) for p in patterns if _is_glob(p))


def _is_glob(pattern: str) -> bool:
    return any(c in pattern for c in "*?[")


def load_tool_policy(path: Path) -> ToolPolicy:
    """Parse, validate, compile; raise `RailsConfigError` listing every problem with file:line."""
    node, raw = read_yaml(path)
    errors: list[str] = []
    rules = raw.get("rules") if isinstance(raw, dict) else None
    compiled: list[CompiledRule | None] = []
    for index, entry in enumerate(rules if isinstance(rules, list) else []):
        where = ["rules", index]
        try:
            rule = msgspec.convert(entry, Rule)
        except msgspec.ValidationError as exc:
            sub = _path_of(exc)
            errors.append(f"{path}:{_line(node, where + sub)}: rules[{index}]: {exc}")
            compiled.append(None)
            continue
        program, problem = _compile(rule.when) if rule.when is not None else (None, None)
        if problem is not None:
            when_node = _node(node, [*where, "when"])
            line, message = _cel_line(when_node, problem)
            errors.append(f"{path}:{line}: rules[{index}].when ({rule.name}): {message}")
        variables, functions = _names(rule.when or "")
        reads = bool(PROVENANCE_FUNCTIONS.intersection(functions))
        roots = frozenset(variables.intersection(ROOTS) | {"call"})
        asks = _asked_arguments(rule.when or "")
        compiled.append(CompiledRule(rule, program, "session.calls" in (rule.when or ""), reads, roots, asks))
    seen: set[str] = set()
    for index, entry in enumerate(compiled):
        if entry is not None and entry.rule.name in seen:
            where = f"{path}:{_line(node, ['rules', index])}: rules[{index}]"
            errors.append(f"{where}: duplicate rule name {entry.rule.name!r}")
        elif entry is not None:
            seen.add(entry.rule.name)
    file = None
    try:
        file = msgspec.convert(raw if raw is not None else {}, PolicyFile)
    except msgspec.ValidationError as exc:
        if not str(exc).endswith("$.rules") and "`$.rules[" not in str(exc):  # rule errors are reported above
            errors.append(f"{path}:{_line(node, _path_of(exc))}: {exc}")
    if errors or file is None:
        raise RailsConfigError(errors or [f"{path}: invalid policy file"])
    exact: dict[str, list[tuple[int, CompiledRule]]] = {}
    globs: list[tuple[int, CompiledRule]] = []
    for order, rule in enumerate(c for c in compiled if c is not None):
        for tool in rule.rule.tools:
            if _is_glob(tool):
                if (order, rule) not in globs:
                    globs.append((order, rule))
            else:
                exact.setdefault(tool, []).append((order, rule))
    version = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    mentions = frozenset(a or b for c in compiled if c is not None and c.rule.when
                         for call in _MENTIONS.findall(c.rule.when) for a, b in _LITERAL.findall(call))  # fmt: skip
    reads = any(c.reads_provenance for c in compiled if c is not None)
    policy = ToolPolicy(file, version, exact, globs, mentions, reads)
    for tool in exact:  # each named tool's rules compiled together now, not on its first call
        policy.rules_for(tool)
    return policy


def _compile(expression: str) -> tuple[Any, str | None]:
    try:
        return compile_condition(expression), None
    except ValueError as exc:
        return None, str(exc)


def _asked_arguments(expression: str) -> frozenset[str] | None:
    """The call's arguments whose values the expression's provenance functions ask about, when each of them
    is given one argument as is (`trusted(call.args.to)`); None when one is given anything else (the whole
    arguments, a comprehension's variable, an expression): then every value's origins are read."""
    names: set[str] = set()
    for function, name in _ASKED.findall(_LITERAL.sub('""', expression)):
        if function == "user_mentions":
            continue  # its words are read for every call of the tool
        if not name:
            return None
        names.add(name)
    return frozenset(names)


def _names(expression: str) -> tuple[set[str], set[str]]:
    """The variables and functions an expression names, outside its string literals (what the context of a
    call must hold; a name a comprehension binds counts too, which only builds a variable more)."""
    variables: set[str] = set()
    functions: set[str] = set()
    for name, call in _NAME.findall(_LITERAL.sub('""', expression)):
        (functions if call else variables).add(name)
    return variables, functions


def _node(node: Any, path: list[str | int]) -> Any:
    for key in path:
        if isinstance(node, yaml.MappingNode):
            node = next((v for k, v in node.value if k.value == key), None)
        elif isinstance(node, yaml.SequenceNode) and isinstance(key, int) and key < len(node.value):
            node = node.value[key]
        else:
            return None
    return node


def _cel_line(when: Any, problem: str) -> tuple[int, str]:
    """The file line of a CEL problem, and the message with the column inside the expression."""
    base = when.start_mark.line + 1 if when is not None else 1
    block = when is not None and when.style in ("|", ">")
    found = _CEL_POSITION.search(problem)
    if found is None:
        return base, problem
    line, column, message = int(found.group(1)), int(found.group(2)), found.group(3)
    if block:
        return base + line, f"CEL error at column {column}: {message}"
    return base + line - 1, f"CEL error at column {column} of the expression: {message}"
