"""Partial matching: how much of a growing text a set of regexes has already decided.

An attempt of a regex at position `s` of a text is *decided* when no path of the engine from `s` reads past
the end of the text — a character, or an assertion that looks at the end (`\\b`, `\\B`, `$`, `\\Z`, a
look-ahead): its outcome (no match, or a match and its end) is then the same whatever text follows.

Each pattern gets a *touching* form, built from its parse tree: a regex for the rests of the text (from `s` to
the end) along which some path of the pattern runs into the end. For a sequence `a b c` it is
`T(a) | a (T(b) | b T(c))`; for a repeat `x{m,n}` it is `x{0,n-1} T(x)`; for a character, an end-sensitive
assertion or a look-ahead's body it is the empty string (it wants one more character); a look-behind or `^`
never touches. It ignores which alternative the engine prefers and whether a repeat is lazy, atomic or
possessive, so it over-approximates: it may hold a little more than needed, never less. Back-references and
conditional groups have no touching form (`Unsupported`): a rail with one cannot stream.

What decides it for a set of patterns over a growing text, the `Scanner`, is in scanner.py.
"""

from __future__ import annotations

import re
import re._constants as C
import re._parser as P
from collections.abc import Sequence
from typing import Any, NamedTuple


class Unsupported(ValueError):
    """A pattern without a touching form (back-references, conditional groups)."""


_CATEGORY = {C.CATEGORY_DIGIT: r"\d", C.CATEGORY_NOT_DIGIT: r"\D", C.CATEGORY_SPACE: r"\s",
             C.CATEGORY_NOT_SPACE: r"\S", C.CATEGORY_WORD: r"\w", C.CATEGORY_NOT_WORD: r"\W"}  # fmt: skip
_AT = {C.AT_BEGINNING: "^", C.AT_BEGINNING_STRING: r"\A", C.AT_BOUNDARY: r"\b", C.AT_NON_BOUNDARY: r"\B",
       C.AT_END: "$", C.AT_END_STRING: r"\Z"}  # fmt: skip
_AT_TOUCH = {C.AT_BOUNDARY: "", C.AT_NON_BOUNDARY: "", C.AT_END_STRING: "", C.AT_END: r"\n?"}  # `$`: end or "\n" end
_LETTERS = ((re.IGNORECASE, "i"), (re.MULTILINE, "m"), (re.DOTALL, "s"), (re.ASCII, "a"))
_REPEATS = (C.MAX_REPEAT, C.MIN_REPEAT, C.POSSESSIVE_REPEAT)
_CHAR = (C.LITERAL, C.NOT_LITERAL, C.ANY, C.IN)
_BACKWARD = (C.AT_BEGINNING, C.AT_BEGINNING_STRING, C.AT_BOUNDARY, C.AT_NON_BOUNDARY)
_ANYCHAR = (C.IN, [(C.CATEGORY, C.CATEGORY_SPACE), (C.CATEGORY, C.CATEGORY_NOT_SPACE)])
_FOLDS = {"i": "\u0130\u0131", "s": "\u017f", "k": "\u212a"}  # what else IGNORECASE matches to an ASCII letter


def _letters(flags: int) -> str:
    return "".join(letter for flag, letter in _LETTERS if flags & flag)


def _class(items: list[tuple[Any, Any]]) -> str:
    out = []
    for op, av in items:
        if op is C.NEGATE:
            out.append("^")
        elif op is C.LITERAL:
            out.append(re.escape(chr(av)))
        elif op is C.RANGE:
            out.append(f"{re.escape(chr(av[0]))}-{re.escape(chr(av[1]))}")
        elif op is C.CATEGORY:
            out.append(_CATEGORY[av])
        else:
            raise Unsupported(f"character class item {op}")
    return f"[{''.join(out)}]"


def _emit(items: Sequence[tuple[Any, Any]], loose: bool = False) -> str:
    """The regex for parsed `items`, without capturing groups; `loose`: atomic groups and possessive repeats as
    plain ones (a superset, for touching forms)."""
    return "".join(_emit_one(op, av, loose) for op, av in items)


def _emit_one(op: Any, av: Any, loose: bool) -> str:
    if op is C.LITERAL:
        return re.escape(chr(av))
    if op is C.NOT_LITERAL:
        return f"[^{re.escape(chr(av))}]"
    if op is C.ANY:
        return "."
    if op is C.IN:
        return _class(av)
    if op is C.BRANCH:
        return "(?:" + "|".join(_emit(branch, loose) for branch in av[1]) + ")"
    if op is C.SUBPATTERN:
        _, add, delete, body = av
        return f"(?{_letters(add)}{'-' + _letters(delete) if delete else ''}:{_emit(body, loose)})"
    if op in _REPEATS:
        low, high, body = av
        count = f"{{{low},}}" if high == C.MAXREPEAT else f"{{{low}}}" if low == high else f"{{{low},{high}}}"
        mode = "?" if op is C.MIN_REPEAT else "+" if op is C.POSSESSIVE_REPEAT and not loose else ""
        return f"(?:{_emit(body, loose)}){count}{mode}"
    if op is C.AT:
        return _AT[av]
    if op in (C.ASSERT, C.ASSERT_NOT):
        direction, body = av
        return f"(?{'<' if direction < 0 else ''}{'=' if op is C.ASSERT else '!'}{_emit(body, loose)})"
    if op is C.ATOMIC_GROUP:
        return f"(?:{_emit(av, True)})" if loose else f"(?>{_emit(av)})"
    raise Unsupported(f"no touching form for {op}")


def _touch(items: Sequence[tuple[Any, Any]]) -> str | None:
    """Regex of the rests of the text along which some path of `items` runs into the end; None: none can.
    Nested, `T(a) | a (T(b) | b (...))`, so that it grows with the pattern, not with its square; past 64 items
    the rest counts as touching whatever it is (a superset, and a bounded regex)."""
    items = list(items)
    tail = r"[\s\S]*" if len(items) > 64 else None
    for op, av in reversed(items[:64]):
        here = _touch_one(op, av)
        after = None if tail is None else _emit_one(op, av, True) + tail
        options = [option for option in (here, after) if option is not None]
        tail = None if not options else options[0] if len(options) == 1 else f"(?:{'|'.join(options)})"
    return tail


def _touch_one(op: Any, av: Any) -> str | None:
    if op in (C.LITERAL, C.NOT_LITERAL, C.ANY, C.IN):
        return ""
    if op is C.BRANCH:
        branches = [t for t in (_touch(branch) for branch in av[1]) if t is not None]
        return "(?:" + "|".join(branches) + ")" if branches else None
    if op is C.SUBPATTERN:
        _, add, delete, body = av
        inner = _touch(body)
        return None if inner is None else f"(?{_letters(add)}{'-' + _letters(delete) if delete else ''}:{inner})"
    if op is C.ATOMIC_GROUP:
        return _touch(av)
    if op in _REPEATS:
        _, high, body = av
        inner = _touch(body)
        if high == 0 or inner is None:
            return None
        count = "*" if high == C.MAXREPEAT else f"{{0,{high - 1}}}"
        return f"(?:{_emit(body, True)}){count}{inner}"
    if op is C.AT:
        return _AT_TOUCH.get(av)
    if op in (C.ASSERT, C.ASSERT_NOT):
        direction, body = av
        return None if direction < 0 else _touch(body)
    raise Unsupported(f"no touching form for {op}")


def _behind(items: Sequence[tuple[Any, Any]]) -> int:
    """The most characters before a match's start that its look-behinds read."""
    width = 0
    for op, av in items:
        if op in (C.ASSERT, C.ASSERT_NOT) and av[0] < 0:
            width = max(width, av[1].getwidth()[1])
        elif op is C.BRANCH:
            width = max([width, *(_behind(branch) for branch in av[1])])
        elif op is C.SUBPATTERN:
            width = max(width, _behind(av[3]))
        elif op is C.ATOMIC_GROUP:
            width = max(width, _behind(av))
        elif op in _REPEATS:
            width = max(width, _behind(av[2]))
    return width


class Parsed(NamedTuple):
    regex: re.Pattern[str]  # the pattern as given: what matches
    items: list[tuple[Any, Any]]  # its parse tree
    flags: int  # its global flags (after inline ones)
    touching: re.Pattern[str] | None  # its touching form, anchored at the end; None: it never runs into the end
    behind: int


def parse(source: str, flags: int = 0) -> Parsed:
    """Raises `Unsupported` (no touching form) or `re.error`."""
    regex = re.compile(source, flags)
    tree = P.parse(source, flags)
    items = list(tree)
    global_flags = _flags(items, tree.state.flags & (re.IGNORECASE | re.MULTILINE | re.DOTALL | re.ASCII))
    touching = _touch_inside(items)
    touching_regex = None if touching is None else re.compile(rf"{touching}\Z", global_flags)
    return Parsed(regex, items, global_flags, touching_regex, _behind(items))


def _touch_inside(items: list[tuple[Any, Any]]) -> str | None:
    """`_touch(items)` less the empty rest of a leading character, which touches only at the very end of the text,
    where the search for the first touching position ends anyway: the regex then starts with that character, and
    a search passes other characters at the cost of one test (the regex engine's prefix check)."""
    if not items or items[0][0] not in _CHAR:
        return _touch(items)
    rest = _touch(items[1:]) if len(items) > 1 else ""
    return None if rest is None else _emit_one(*items[0], True) + rest


def _leads(items: list[tuple[Any, Any]], limit: int = 32) -> list[tuple[list[tuple[Any, Any]], bool]]:
    """Sequences whose union holds `items`' matches and touching rests, as (sequence, touching only), each
    led by a character where that can be done: groups are opened, branches split, repeats unrolled once, a
    leading look-ahead split off (its touching rests), and look-behinds, `\\b` and `^` in front are moved
    behind the first character (`\\bx` is `x(?<=\\b.)`). A joint search over them then passes a position at
    the cost of one character test."""
    pending: list[tuple[list, list, bool]] = [(items, [], False)]
    done: list[tuple[list, bool]] = []
    while pending:
        seq, behind, only = pending.pop()
        if seq and seq[0][0] in _CHAR:
            after = [(C.ASSERT, (-1, [*behind, _ANYCHAR]))] if behind else []
            done.append(([seq[0], *after, *seq[1:]], only))
            continue
        if not seq or len(done) + len(pending) >= limit:
            done.append(([*behind, *seq], only))
            continue
        (op, av), rest = seq[0], seq[1:]
        if (op is C.AT and av in _BACKWARD) or (op in (C.ASSERT, C.ASSERT_NOT) and av[0] < 0):
            pending.append((rest, [*behind, (op, av)], only))
        elif op in (C.ASSERT, C.ASSERT_NOT):  # a look-ahead: its own touching rests, and the rest as if true
            pending.append((list(av[1]), behind, True))
            pending.append((rest, behind, only))
        elif op is C.BRANCH:
            pending.extend(([*branch, *rest], behind, only) for branch in av[1])
        elif op is C.SUBPATTERN and not av[1] and not av[2]:
            pending.append(([*av[3], *rest], behind, only))
        elif op is C.SUBPATTERN and (opened := _open_scoped(av[1], av[2], list(av[3]))) is not None:
            pending.append(([*opened, *rest], behind, only))
        elif op is C.ATOMIC_GROUP:
            pending.append(([*av, *rest], behind, only))
        elif op in _REPEATS:
            low, high, body = av
            if high != 0:
                again = (
                    []
                    if high == 1
                    else [(C.MAX_REPEAT, (max(low - 1, 0), high if high == C.MAXREPEAT else high - 1, body))]
                )
                pending.append(([*body, *again, *rest], behind, only))
            if low == 0:
                pending.append((rest, behind, only))
        else:
            done.append(([*behind, *seq], only))
    return done


def _cases(char: str) -> tuple[Any, Any]:
    """A character class of what `char` matches under IGNORECASE, for an ASCII letter."""
    variants = sorted({char.lower(), char.upper(), *_FOLDS.get(char.lower(), "")})
    return (C.IN, [(C.LITERAL, ord(v)) for v in variants])


def _open_scoped(add: int, delete: int, body: list[tuple[Any, Any]]) -> list[tuple[Any, Any]] | None:
    """The items of `(?add-delete:body)` with the flags pushed down onto each, the first made free of them
    where that changes nothing it matches (a character they do not affect; an ASCII letter under IGNORECASE as
    the class of its cases), or opened further; None when it cannot be."""
    if not body:
        return []
    (op, av), more = body[0], body[1:]
    tail = [(C.SUBPATTERN, (None, add, delete, more))] if more else []
    ignore = add & re.IGNORECASE
    if op in (C.LITERAL, C.NOT_LITERAL) and (not ignore or chr(av).lower() == chr(av).upper()):
        return [(op, av), *tail]
    if op is C.LITERAL and chr(av).isascii() and chr(av).isalpha():
        return [_cases(chr(av)), *tail]
    if op is C.IN and not ignore:
        return [(op, av), *tail]
    if op is C.ANY:
        return [_ANYCHAR if add & re.DOTALL else (C.NOT_LITERAL, 10) if delete & re.DOTALL else (op, av), *tail]
    if op is C.BRANCH:
        return [(C.BRANCH, (None, [[(C.SUBPATTERN, (None, add, delete, list(b)))] for b in av[1]])), *tail]
    if op in _REPEATS:
        return [(op, (av[0], av[1], [(C.SUBPATTERN, (None, add, delete, list(av[2])))])), *tail]
    if op is C.SUBPATTERN:
        inner_add, inner_delete = (add & ~av[2]) | av[1], (delete & ~av[1]) | av[2]
        return [(C.SUBPATTERN, (None, inner_add, inner_delete, list(av[3]))), *tail]
    return None


def _uses(items: Sequence[tuple[Any, Any]], ops: set[Any]) -> bool:
    """Whether `items` hold an item whose op (or, for AT, whose anchor) is in `ops`, at any depth."""
    for op, av in items:
        if op in ops or (op is C.AT and av in ops):
            return True
        if op is C.BRANCH and any(_uses(branch, ops) for branch in av[1]):
            return True
        if (op is C.SUBPATTERN and _uses(av[3], ops)) or (op is C.ATOMIC_GROUP and _uses(av, ops)):
            return True
        if (op in _REPEATS and _uses(av[2], ops)) or (op in (C.ASSERT, C.ASSERT_NOT) and _uses(av[1], ops)):
            return True
    return False


def _flags(items: Sequence[tuple[Any, Any]], flags: int) -> int:
    """`flags` less those that change nothing in `items` (DOTALL without `.`, MULTILINE without `^`, `$`)."""
    if not _uses(items, {C.ANY}):
        flags &= ~re.DOTALL
    if not _uses(items, {C.AT_BEGINNING, C.AT_END}):
        flags &= ~re.MULTILINE
    return flags


def _joint(members: list[Parsed], flags: int) -> tuple[str, str]:
    """One regex under `flags` for a superset of the members' matches and of their touching rests (each of
    those in a capturing group, anchored at the end): alternatives grouped by their first character, which
    they start with where they can, so that a search tries few at each position; `lastindex` tells a
    touching rest (a group) from a match. What a member needs other flags for is in a scoped group. And one
    for the matches alone (at the end of a stream, when nothing touches the end any more)."""
    # first character -> look-behind after it ("" none) -> (match rests, touching rests): options that share a
    # look-behind (a word start moved behind the first character) test it once at a position, not once each
    heads: dict[str, dict[str, tuple[list[str], list[str]]]] = {}
    others: list[str] = []
    alone: list[str] = []  # the matches alone
    for member in members:
        add, drop = _letters(member.flags & ~flags), _letters(flags & ~member.flags)
        scope, close = (f"(?{add}{'-' + drop if drop else ''}:", ")") if add or drop else ("", "")
        for seq, only in _leads(member.items):
            op, av = seq[0] if seq else (None, None)
            if op is C.LITERAL and member.flags & re.IGNORECASE and chr(av).lower() == chr(av).upper():
                ignore = False  # a character without case: the same under any flags
            elif op is C.LITERAL and member.flags & re.IGNORECASE and chr(av).isascii() and chr(av).isalpha():
                (op, av), ignore = _cases(chr(av)), False
            else:
                ignore = op in (C.LITERAL, C.NOT_LITERAL, C.IN) and member.flags & re.IGNORECASE
            # the first character outside the scope when the group's flags match at least what it matches
            outside = op in _CHAR and not (
                (ignore and not flags & re.IGNORECASE)
                or (op is C.ANY and member.flags & re.DOTALL and not flags & re.DOTALL)
            )
            if outside:
                rest, lead = seq[1:], ""
                if not scope and rest and rest[0][0] in (C.ASSERT, C.ASSERT_NOT) and rest[0][1][0] < 0:
                    lead, rest = _emit_one(*rest[0], True), rest[1:]  # the same flags: it can stand outside
                matches, rests = heads.setdefault(_emit_one(op, av, True), {}).setdefault(lead, ([], []))
                after = _touch(rest)
                if not only:
                    matches.append(f"{scope}{_emit(rest, True)}{close}")
                    alone.append(_emit_one(op, av, True) + lead + matches[-1])
                if after is not None:
                    rests.append(f"{scope}{after}{close}")
                continue
            if op in _CHAR:  # led by a character the group's flags would not match right: in the scope
                after = _touch(seq[1:])
                touching = None if after is None else _emit_one(op, av, True) + after
            else:
                touching = _touch(seq)
            if not only:
                others.append(f"{scope}{_emit(seq, True)}{close}")
                alone.append(others[-1])
            if touching is not None:
                others.append(f"({scope}{touching}{close})\\Z")
    for head, leads in heads.items():
        parts = []
        for lead, (matches, rests) in leads.items():
            options = [*matches, *([f"({'|'.join(rests)})\\Z"] if rests else [])]
            if options:
                parts.append(lead + (options[0] if len(options) == 1 else f"(?:{'|'.join(options)})"))
        if parts:
            others.append(head + (parts[0] if len(parts) == 1 else f"(?:{'|'.join(parts)})"))
    return "|".join(others) or "(?!)", "|".join(alone) or "(?!)"
