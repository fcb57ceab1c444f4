"""The CEL runtime of tool policies: Google's CEL (the C++ implementation, through `cel-expr-python`).

One environment serves every policy file: the variables rules read (`call`, `session`, `request`, maps
with string keys) and the functions they call, each declared with typed overloads so that the checker
rejects a misspelt name or a wrong argument type when the file loads, not when a call arrives. CEL's
standard library and its `strings` extension come with it.

Functions that answer about the call being decided (`tool_count`, the provenance functions) read the
per-call state set around one evaluation (`bound`), so a compiled expression is shared by every call
and the variables converted into CEL are only the ones the tool's rules read.
"""

from __future__ import annotations

import contextvars
import functools
import posixpath
import re
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cel_expr_python import cel
from cel_expr_python.ext import ext_strings

from .provenance import ProvenanceView
from .values import sinks

T = cel.Type
ROOTS = ("call", "session", "request")
PROVENANCE_FUNCTIONS = frozenset({"provenance", "from_user", "trusted", "user_pointed", "tainted", "made_up",
                                  "user_mentions", "sinks"})  # fmt: skip
_ANY = {
    "string": T.STRING,
    "int": T.INT,
    "uint": T.UINT,
    "double": T.DOUBLE,
    "bool": T.BOOL,
    "null": T.NULL,
    "list": T.LIST,
    "map": T.MAP,
}  # fmt: skip  (a Python implementation is matched by the argument's type)
_STATUS = re.compile(r"^[A-Z_]+: ")
_UNDECLARED = re.compile(r"undeclared reference to '([\w.]+)'(?: \(in container ''\))?")
_CONDITION_TYPES = (T.BOOL, T.DYN)


class RuleFailure(Exception):
    """A rule that could not be evaluated for this call (the message names the problem in CEL's terms)."""


@dataclass(slots=True)
class CallState:
    """What the functions of one evaluation answer from: the session's allowed calls per tool and where
    the call's values came from."""

    tool_counts: Counter[str] = field(default_factory=Counter)
    provenance: ProvenanceView = field(default_factory=ProvenanceView)
    args: Any = None  # the call's arguments, parsed (what `sinks()` reads)


_STATE: contextvars.ContextVar[CallState] = contextvars.ContextVar("sentrail_cel_call")
_IDLE = CallState()  # outside an evaluation (nothing counted, nothing indexed)


class bound:  # named as the function it replaces: `with bound(state):`
    """The state the functions answer from while one call is evaluated (a class: entered once per decision,
    it costs a fraction of a generator-based context manager)."""

    __slots__ = ("state", "token")
    token: contextvars.Token[CallState]

    def __init__(self, state: CallState) -> None:
        self.state = state

    def __enter__(self) -> None:
        self.token = _STATE.set(self.state)

    def __exit__(self, *_: object) -> None:
        _STATE.reset(self.token)


@functools.lru_cache(maxsize=4096)  # one string per input: cel-expr-python keeps each one returned (`_leak_free`)
def email_domain(address: str) -> str:
    return address.rsplit("@", 1)[-1].strip().lower().rstrip(">")


_lower = functools.lru_cache(maxsize=4096)(str.lower)  # the same, for lower()


def path_under(path: str, root: str) -> bool:
    """True when `path`, normalized (`..` resolved), is `root` or inside it."""
    normal, base = posixpath.normpath(path), posixpath.normpath(root)
    if not normal.startswith("/") and base.startswith("/"):
        normal = posixpath.normpath(posixpath.join(base, normal))
    return normal == base or normal.startswith(base.rstrip("/") + "/")


def _per_call(method: str) -> Callable[..., Any]:
    def call(*args: Any) -> Any:
        return getattr(_STATE.get(_IDLE).provenance, method)(*args)

    return call


def _named(name: str, impl: Callable[..., Any]) -> Callable[..., Any]:
    """The implementation, with a failure reported as `name() failed: why` (what the rule's reason shows)."""

    def call(*args: Any) -> Any:
        try:
            return impl(*args)
        except Exception as exc:
            raise ValueError(f"{name}() failed: {exc}") from None

    return call


_HANDED = threading.local()  # per thread: the one list each list-returning function gives CEL


def _handed_over(name: str, impl: Callable[..., list[Any]]) -> Callable[..., list[Any]]:
    """`impl`, its result given to CEL in one list per thread, refilled at each call: cel-expr-python 0.1.3
    keeps a reference to each container a function returns and never drops it (every result leaked: ~2 KB
    for 8 origins, and work for the garbage collector). CEL copies the list as the function returns, so
    the next call may refill it."""

    def call(*args: Any) -> list[Any]:
        handed: list[Any] = _HANDED.__dict__.setdefault(name, [])
        handed[:] = impl(*args)
        return handed

    return call


def _call_sinks() -> list[str]:
    """`sinks()`: the sinks of the call being decided, read from its arguments as parsed (see `_leak_free`)."""
    return sinks(_STATE.get(_IDLE).args)


def _function(name: str, impl: Callable[..., Any], result: Any, *params: Any) -> cel.FunctionDecl:
    return cel.FunctionDecl(name, _overloads(name, impl, result, *params))


def _overloads(name: str, impl: Callable[..., Any], result: Any, *params: Any) -> list[cel.Overload]:
    """`params` are types or `None` for a value of any type (one overload per CEL type, one level deep)."""
    implementation = _named(name, impl)
    signatures: list[list[tuple[str, Any]]] = [[]]
    for param in params:
        choices = list(_ANY.items()) if param is None else [(param.name().lower(), param)]
        signatures = [[*sig, choice] for sig in signatures for choice in choices]
    return [cel.Overload("_".join([name, *(kind for kind, _ in sig)]), result, [t for _, t in sig],
                         impl=implementation) for sig in signatures]  # fmt: skip


def _declarations() -> list[cel.FunctionDecl]:
    origin = T.Map(T.STRING, T.DYN)
    mentioned = _per_call("user_mentions")
    asked = _named("user_mentions", mentioned)
    mentions = [cel.Overload(f"user_mentions_{n}", T.BOOL, [T.STRING] * n, impl=asked) for n in range(1, 9)]
    listed = _named("user_mentions", lambda words: mentioned(*words))
    mentions.append(cel.Overload("user_mentions_list", T.BOOL, [T.List(T.STRING)], impl=listed))
    sinks_overloads = _overloads("sinks", _handed_over("sinks", sinks), T.List(T.STRING), None)
    sinks_overloads += _overloads("sinks", _handed_over("sinks", _call_sinks), T.List(T.STRING))
    return [
        _function("email_domain", email_domain, T.STRING, T.STRING),
        _function("path_under", path_under, T.BOOL, T.STRING, T.STRING),
        _function("lower", _lower, T.STRING, T.STRING),
        _function("tool_count", lambda name: _STATE.get(_IDLE).tool_counts[name], T.INT, T.STRING),
        _function("provenance", _handed_over("provenance", _per_call("provenance")), T.List(origin), None),
        _function("from_user", _per_call("from_user"), T.BOOL, None),
        _function("trusted", _per_call("trusted"), T.BOOL, None),
        _function("user_pointed", _per_call("user_pointed"), T.BOOL, None),
        _function("made_up", _per_call("made_up"), T.BOOL, None),
        _function("tainted", _per_call("tainted"), T.BOOL, None, T.STRING),
        cel.FunctionDecl("user_mentions", mentions),
        cel.FunctionDecl("sinks", sinks_overloads),
    ]


_env: Any = None
_DECLARED = frozenset({"email_domain", "path_under", "lower", "tool_count"} | PROVENANCE_FUNCTIONS)


def environment() -> Any:
    global _env
    if _env is None:
        variables = dict.fromkeys(ROOTS, T.Map(T.STRING, T.DYN))
        _env = cel.NewEnv(variables=variables, extensions=[ext_strings.ExtStrings()], functions=_declarations())
    return _env


_SINKS_OF_CALL = re.compile(r"\bsinks\(\s*call\s*\.\s*args\s*\)")
_CALL_REBOUND = re.compile(r"\b(?:all|exists|exists_one|map|filter)\(\s*call\s*,")


def _leak_free(expression: str) -> str:
    """`sinks(call.args)` as `sinks()`, the same sinks read from the call's own arguments: cel-expr-python 0.1.3
    keeps every value it hands a Python function (a copy of the call's whole arguments, ~0.5 KB a call and
    more with a long text). Padded with spaces, so that error positions stay where the file has them; not
    where a comprehension names its variable `call`."""
    if "sinks" not in expression or _CALL_REBOUND.search(expression):
        return expression
    return _SINKS_OF_CALL.sub(lambda m: "sinks(" + " " * (len(m.group()) - 7) + ")", expression)


def compile_condition(expression: str) -> Any:
    """The checked expression; raises `ValueError` with CEL's message (positions as `<input>:line:col`),
    unknown names said as such."""
    written = _leak_free(expression)
    try:
        program = environment().compile(written)
    except Exception as exc:
        message = str(exc)
        for line, original in zip(written.splitlines(), expression.splitlines(), strict=True):
            message = message.replace(line, original) if line != original else message  # the line as in the file
        raise ValueError(_explain_compile(message, expression)) from None
    if program.return_type() not in _CONDITION_TYPES:
        raise ValueError(f"a condition must be true or false; this one gives {program.return_type().name().lower()}")
    return _planned(program)


_EMPTY = {"call": {"id": "", "name": "", "args": {}}, "request": {"tenant": "", "model": ""},
          "session": {"id": "", "labels": [], "steps": 0, "call_count": 0, "calls": []}}  # fmt: skip


def _planned(program: Any) -> Any:
    """The program, evaluated once on empty variables: cel-expr-python plans a program at its first
    evaluation (0.2-2 ms), which each tool's first call after a load would pay otherwise."""
    with bound(CallState()):
        try:
            program.eval(activation(_EMPTY))
        except Exception:
            pass  # a rule that reads an argument: planned all the same
    return program


def _explain_compile(message: str, expression: str) -> str:
    message = _STATUS.sub("", message).removeprefix("ERROR: ")

    def undeclared(found: re.Match[str]) -> str:
        name = found.group(1)
        if name in _DECLARED:
            return f"{name}() does not take this number of arguments"
        if re.search(rf"(?<![\w.]){re.escape(name)}\s*\(", expression):
            return f"unknown function {name}"
        return f"unknown variable {name.split('.')[0]} (use {', '.join(ROOTS)})"

    return _UNDECLARED.sub(undeclared, message)


def compile_all(expressions: list[str]) -> Any:
    """One program giving the list of every condition's value (each already checked on its own), so that a
    tool's rules cost one evaluation; None when it does not compile."""
    try:
        joined = "[\n" + ",\n".join(f"(\n{_leak_free(e)}\n)" for e in expressions) + "\n]"
        return _planned(environment().compile(joined))
    except Exception:
        return None


def evaluate_all(program: Any, context: Any) -> list[Any] | None:
    """Every condition's value, or None when one of them fails (then each is evaluated on its own, for
    its reason)."""
    try:
        result = program.eval(context)
    except Exception:
        return None
    return None if result.type() == T.ERROR else result.plain_value()


def activation(variables: dict[str, Any]) -> Any:
    return environment().Activation(variables)


def evaluate(program: Any, context: Any) -> bool:
    """True when the condition holds; `RuleFailure` when it cannot be evaluated (an error value or a
    runtime refusal), with CEL's message without its status code."""
    try:
        result = program.eval(context)
    except Exception as exc:
        raise RuleFailure(_STATUS.sub("", str(exc))) from None
    if result.type() == T.ERROR:
        raise RuleFailure(_STATUS.sub("", str(result.value())))
    return result.value() is True
