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

A `Scanner` runs a set of patterns over a growing text from each one's resume position, as `finditer` on the
whole text would, and reports the decided matches and the *frontier*: the earliest attempt not yet decided. No
match that starts before the frontier can change, whatever follows. One search over the undecided tail answers
the common case (nothing matched: the frontier is where some pattern is half-way through, typically the last
word), with a joint regex of every pattern's matches and touching rests (supersets, rewritten to start with a
character and grouped by it, so that a position costs a few character tests); only when it finds a match do
smaller groups, then single patterns, scan on their own.
"""

from __future__ import annotations

import functools
import re
import re._constants as C
import re._parser as P
from collections.abc import Sequence
from typing import Any, NamedTuple

HOLD_SCAN = 256  # a held tail longer than this is rescanned only once it grew by half: CPU stays linear


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


class _Group:
    """Some patterns of a set, searched jointly: when neither superset finds anything before the first
    position where one of them runs into the end, they are all decided up to there (the common case);
    otherwise the group's parts are searched, down to single patterns."""

    def __init__(self, parsed: list[Parsed], indices: list[int], fanout: int = 6, root: bool = True) -> None:
        self.indices = indices
        self.parts: list[_Group] = []
        self.both: re.Pattern[str] | None = None  # matches and (touching rests): a search finds the first of either
        self.any: re.Pattern[str] | None = None  # the matches alone
        if len(indices) == 1 and not root:
            return  # (a pattern alone at the root is searched jointly too: one search decides the common case)
        counts: dict[int, int] = {}
        for i in indices:
            counts[parsed[i].flags] = counts.get(parsed[i].flags, 0) + 1
        flags = max(counts, key=counts.__getitem__) & ~re.IGNORECASE  # IGNORECASE would hide first characters
        if any(parsed[i].flags & re.ASCII != flags & re.ASCII for i in indices):  # ASCII cannot be scoped off
            by_ascii = [[i for i in indices if parsed[i].flags & re.ASCII == a] for a in (0, re.ASCII)]
            self.parts = [_Group(parsed, chunk, fanout, root) for chunk in by_ascii if chunk]
            return
        joint, alone = _joint([parsed[i] for i in indices], flags)
        self.both = re.compile(joint, flags)
        self.any = re.compile(alone, flags) if root else None
        size = 1 if len(indices) <= 2 * fanout else -(-len(indices) // fanout)  # two levels above the patterns
        self.parts = [_Group(parsed, indices[i : i + size], fanout, False) for i in range(0, len(indices), size)]


def literals(words: Sequence[str]) -> str:
    """A regex for any of `words`, shaped as a tree of their letters (a search passes a position at the cost
    of one test of its character, where an alternation of the words tests each)."""
    tree: dict[str, Any] = {}
    for word in words:
        node = tree
        for char in word:
            node = node.setdefault(char, {})
        node[""] = {}

    def emit(node: dict[str, Any]) -> str:
        branches = [re.escape(char) + emit(child) for char, child in sorted(node.items()) if char]
        if not branches:
            return ""
        body = branches[0] if len(branches) == 1 else f"(?:{'|'.join(branches)})"
        return f"(?:{body})?" if "" in node else body

    return emit(tree)


@functools.lru_cache(maxsize=64)
def patterns(sources: tuple[tuple[str, int], ...]) -> Patterns:
    """`Patterns` for `sources`, built once per process (rails are rebuilt on every reload)."""
    return Patterns(sources)


class Patterns:
    """The regexes of one rail, compiled for streams. `context`: characters before the earliest undecided
    attempt a stream keeps for look-behinds and word boundaries."""

    def __init__(self, sources: Sequence[tuple[str, int]]) -> None:
        parsed = [parse(source, flags) for source, flags in sources]
        self.regexes = [p.regex for p in parsed]
        self.touching = [p.touching for p in parsed]
        self.root = _Group(parsed, list(range(len(parsed)))) if parsed else None
        self.context = max([0, *(p.behind for p in parsed)]) + 1  # +1: \b, (?m)^, a word-start check

    def __len__(self) -> int:
        return len(self.regexes)

    def scan(self, text: str, base: int, resume: list[int], final: bool) -> list[tuple[int, re.Match[str]]]:
        """Advance every pattern's `resume` (absolute; `text[0]` is at `base`) to its first undecided attempt
        (the end of `text` when `final`) and return the decided matches found on the way, as
        (pattern index, match on `text`)."""
        found: list[tuple[int, re.Match[str]]] = []
        if self.root is not None:
            self._scan(self.root, text, base, resume, found, final)
        return found

    def _scan(self, group: _Group, text: str, base: int, resume: list[int], found: list, final: bool) -> None:
        joint = group.any if final else group.both
        if joint is not None:
            pos = min(resume[i] for i in group.indices) - base
            match = joint.search(text, pos)
            if match is None or match.lastindex:  # nothing matched before the first undecided attempt
                edge = base + (len(text) if match is None else match.start())
                for index in group.indices:
                    resume[index] = max(resume[index], edge)
                return
        if group.parts:
            for part in group.parts:
                self._scan(part, text, base, resume, found, final)
            return
        if final:
            for index in group.indices:
                found.extend((index, m) for m in self.regexes[index].finditer(text, resume[index] - base))
                resume[index] = base + len(text)
            return
        for index in group.indices:
            regex, touching = self.regexes[index], self.touching[index]
            pos = resume[index] - base
            edge = _first(touching, text, pos)
            while (match := regex.search(text, pos)) is not None and match.start() < edge:
                found.append((index, match))
                pos = max(match.end(), match.start() + 1)
                if pos > edge:
                    edge = _first(touching, text, pos)
            resume[index] = base + edge


def _first(touching: re.Pattern[str] | None, text: str, pos: int) -> int:
    if touching is None:
        return len(text)
    match = touching.search(text, min(pos, len(text)))
    return len(text) if match is None else match.start()


class Scanner:
    """One stream's scan of a growing text with `patterns`. It keeps the text from `context` characters before
    the frontier on: `slice` reads what lies between the last frontier and the end."""

    def __init__(self, patterns: Patterns) -> None:
        self.patterns = patterns
        self.text, self.base = "", 0
        self.resume = [0] * len(patterns)  # per pattern, absolute; the `frontier` is never below any
        self.frontier = 0  # absolute: no match starting before it can change any more
        self._rescan = 0  # a long held tail: the length it must reach before the next scan
        self._context = patterns.context
        self._root = patterns.root

    @property
    def end(self) -> int:
        return self.base + len(self.text)

    def slice(self, start: int, end: int) -> str:
        return self.text[start - self.base : end - self.base]

    def before(self, position: int) -> str:
        """The character before `position`, or "" at the start of the text."""
        return self.text[position - self.base - 1] if position > 0 else ""

    def feed(self, piece: str, final: bool = False) -> list[tuple[int, int, int, str]]:
        """Add `piece`; the decided matches it made known, as (pattern index, start, end, text), absolute."""
        if not (piece or final):
            return []
        base, text, frontier = self.base, self.text, self.frontier
        if frontier - self._context - base > 64:  # drop what no look-behind reads any more, now and then
            text, base = text[frontier - self._context - base :], frontier - self._context
            self.base = base
        self.text = text = text + piece
        held = base + len(text) - frontier
        root = self._root
        if final:
            if root is not None and root.any is not None and root.any.search(text, frontier - base) is None:
                self.frontier = base + len(text)
                return []
        else:
            if held > HOLD_SCAN and held < self._rescan:
                return []
            if root is not None and root.both is not None:
                match = root.both.search(text, frontier - base)
                if match is None or match.lastindex:  # the common case: no match, all decided to the edge
                    self.frontier = edge = base + (len(text) if match is None else match.start())
                    self._rescan = 0 if edge > frontier or held <= HOLD_SCAN else held + held // 2
                    return []
        resume = self.resume
        for index, at in enumerate(resume):
            resume[index] = max(at, frontier)
        found = self.patterns.scan(text, base, resume, final)
        self.frontier = min(resume) if resume else base + len(text)
        self._rescan = 0 if self.frontier > frontier or held <= HOLD_SCAN else held + held // 2
        return [(index, base + m.start(), base + m.end(), m.group()) for index, m in found]
