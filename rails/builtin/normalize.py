"""The forms of a text the heuristic rails match on, so that spelling tricks do not hide a phrase.

`fold(text)`: Unicode confusables folded to the ASCII character they are drawn like (Cyrillic a U+0430,
fullwidth A U+FF21, mathematical bold i U+1D422, ...): compatibility forms by NFKC, the rest from the confusables
data of the `confusable-homoglyphs` package (Unicode's confusables.txt), read once at import. Only characters drawn
like one printable ASCII character are folded, so `fold` keeps every position: `fold(text)[i]` looks like `text[i]`.

`normal(text)`: `fold(text)` lowercased, with the noise that splits a phrase taken out:
- whitespace runs, line wrapping and the markup that starts a wrapped line (indentation, `>` quoting, YAML's `|`,
  comment leaders `#` and `//`) become one space; a blank line (two line breaks or more) or a line break before
  a list item (`- `, `* `, `1. `) stays a break, `\\n`, so that separate items are not read as one sentence;
- JSON / YAML escapes of whitespace (a backslash and `n`, `r` or `t`) count as the whitespace they stand for;
- invisible format characters (zero-width, bidirectional controls, Unicode tags, soft hyphen) and terminal escape
  sequences (ANSI `ESC[...m`, written raw or escaped as `\\u001b[`, `\\x1b[`, `\\033[`, `\\e[`) are removed.

`NormalStream` computes the same normal form for a text that arrives in pieces, as far as the text is decided (a
whitespace run at the end may still grow), and maps each position of the normal form back to the text
(`origin`): a rail that matches on the normal form can say where in the text a match starts.
"""

from __future__ import annotations

import re
import unicodedata

from confusable_homoglyphs.confusables import confusables_data

from .scanner import Scanner, patterns

# Blocks of compatibility forms of ASCII characters (fullwidth, mathematical alphanumerics, letterlike symbols,
# Roman numerals, enclosed and super/subscript letters): NFKC gives their ASCII character, case kept
_COMPATIBLE = ((0xFF01, 0xFF5F), (0x1D400, 0x1D7FF), (0x2100, 0x218F), (0x2460, 0x24FF), (0x2070, 0x209F))


def _fold_table() -> dict[int, str]:
    """Every character drawn like one printable ASCII character, to that character: compatibility forms by NFKC,
    then the confusables data (it lists the confusables under each ASCII character, and some non-ASCII characters
    with an ASCII homoglyph)."""
    table: dict[int, str] = {}
    for low, high in _COMPATIBLE:
        for code in range(low, high + 1):
            ascii_form = unicodedata.normalize("NFKC", chr(code))
            if len(ascii_form) == 1 and ascii_form.isascii() and ascii_form.isprintable() and ascii_form != " ":
                table[code] = ascii_form
    for char, homoglyphs in confusables_data.items():
        for glyph in (h["c"] for h in homoglyphs):
            source, target = (glyph, char) if char.isascii() else (char, glyph)
            if target == "l" and source.isupper():  # the data draws capital I-likes as `l`: keep their case
                target = "I"
            if len(source) == 1 and len(target) == 1 and not source.isascii() and target.isascii():
                if target.isprintable() and not target.isspace() and unicodedata.category(source)[0] not in "CZ":
                    table.setdefault(ord(source), target)
    return table


FOLD = _fold_table()


def _ranges(codes: list[int]) -> str:
    """A character class of `codes` (sorted), consecutive ones as ranges."""
    spans: list[list[int]] = []
    for code in codes:
        if spans and code == spans[-1][1] + 1:
            spans[-1][1] = code
        else:
            spans.append([code, code])
    return "[" + "".join(re.escape(chr(a)) + ("" if a == b else "-" + re.escape(chr(b))) for a, b in spans) + "]"


# a gate, one test a character: the Basic Multilingual Plane's class compiles to a bitmap, and the characters past it
# are one range (a class of their own gaps would be a list of ranges, tried one by one)
_ASTRAL = [c for c in FOLD if c > 0xFFFF]
_FOLDABLE = re.compile(
    _ranges(sorted(c for c in FOLD if c <= 0xFFFF)) + (f"|[{chr(min(_ASTRAL))}-{chr(max(_ASTRAL))}]" if _ASTRAL else "")
)


def fold(text: str) -> str:
    """`text` with confusables folded to ASCII, position for position."""
    return text if text.isascii() or not _FOLDABLE.search(text) else text.translate(FOLD)


_SPACE = "\t\f\v \xa0\u1680\u2000-\u200a\u202f\u205f\u3000"
_LINE = "\n\r\x85\u2028\u2029"
_INVISIBLE = "\u00ad\u180e\u200b-\u200f\u202a-\u202e\u2060-\u2064\u2066-\u2069\ufeff\U000e0000-\U000e007f"
_BREAK = r"(?:\r\n?|[\n\x85\u2028\u2029]|\\r\\n|\\[nr])"
_CSI = r"\[[0-?]{0,32}[ -/]{0,4}[@-~]"  # ESC [ parameters intermediates final
_ANSI = rf"(?:(?:\x1b|\\u001[bB]|\\x1[bB]|\\033|\\e){_CSI}|\x1b(?:\][^\x07\x1b\n]{{0,256}}(?:\x07|\x1b\\)|[@-Z_]))"
_BULLET = r"(?:[-*+\u2022\u2023\u25e6\u2043](?=[ \t])|\d{1,3}[.)](?=[ \t]))"
_ITEM = rf"[{_SPACE}{_INVISIBLE}]|\\t|{_ANSI}"
_LINE_START = rf"(?:{_ITEM}|[>|#]|//)*{_BULLET}?"  # what a line starts with before its text: indentation, quoting
# A run of noise. Its first character is read first, then what it leads (a single character class in front lets
# the regex engine pass other characters at the cost of one test): a lone space before a word is no noise.
NOISE = re.compile(
    rf"[{_SPACE}{_LINE}{_INVISIBLE}\\\x1b]"
    rf"(?:(?<=[\t\f\v\xa0\u1680\u2000-\u200a\u202f\u205f\u3000{_INVISIBLE}])"
    rf"|(?<= )(?=[{_SPACE}{_LINE}{_INVISIBLE}\\\x1b])"
    rf"|(?<=[\n\x85\u2028\u2029]){_LINE_START}"
    rf"|(?<=\r)\n?{_LINE_START}"
    rf"|(?<=\\)(?:t|(?:r\\n|[nr]){_LINE_START}|(?:u001[bB]|x1[bB]|033|e){_CSI})"
    rf"|(?<=\x1b)(?:{_CSI}|\][^\x07\x1b\n]{{0,256}}(?:\x07|\x1b\\)|[@-Z_]))"
    rf"(?:{_ITEM}|{_BREAK}{_LINE_START})*"
)
# what a piece without noise lacks: a character that starts a run, but for a plain space, and a space after a space
# (a plain space starts one only when such a character follows it)
_LOUD = re.compile(rf"[{_SPACE.replace(' ', '')}{_LINE}{_INVISIBLE}\\\x1b]|  ")
_BREAKS = re.compile(_BREAK)
_BULLETS = re.compile(_BULLET)
_WHITE = re.compile(rf"[{_SPACE}]|\\t")
_SIGMA = {ord("\u03c2"): "\u03c3"}  # final sigma: lower() reads it from the next character; one form for all


def _replacement(run: str) -> str:
    """What a run of noise stands for: a break (a blank line, or a list item starts), a space, or nothing."""
    breaks = len(_BREAKS.findall(run))
    if breaks >= 2 or (breaks and _BULLETS.search(run)):
        return "\n"
    return " " if breaks or _WHITE.search(run) else ""


def _lower(text: str) -> str:
    lowered = text.lower()
    return lowered if lowered.isascii() else lowered.translate(_SIGMA)


def normal(text: str) -> str:
    """The normal form of `text` (see the module's docstring)."""
    return _lower(NOISE.sub(lambda m: _replacement(m.group()), fold(text)))


class NormalStream:
    """`normal` on a text that arrives in pieces: `feed` returns the next part of the normal form, as far as the
    text is decided (all of it when `final`); `origin` maps a position of the normal form to the text's."""

    def __init__(self) -> None:
        self.scanner = Scanner(patterns(((NOISE.pattern, NOISE.flags),)))
        self.done = 0  # the text's position up to which the normal form is out
        self.size = 0  # the normal form's length so far
        self.marks: list[tuple[int, int]] = [(0, 0)]  # (normal, text): from each on, both advance together
        self._at = 0  # the mark the last `origin` used (queries move forward)

    def feed(self, piece: str, final: bool = False) -> str:
        return self.feed_folded(fold(piece), final)

    quiet = True  # `feed` takes a piece without noise after decided text without a search

    def feed_folded(self, folded: str, final: bool = False) -> str:
        """`feed` of a piece already folded (`fold`)."""
        scanner = self.scanner
        end, frontier = scanner.end, scanner.frontier
        if (
            self.quiet and not final and folded  # after decided text, or a last space that no noise follows now
            and (frontier == end or (frontier == end - 1 and folded[0] != " " and scanner.text[-1] == " "))
            and _LOUD.search(folded) is None
        ):  # fmt: skip
            end += len(folded)  # all of it is decided, but for a last space (a run starts there if noise follows)
            scanner.extend(folded, end - 1 if folded[-1] == " " else end)
            return self._plain(scanner.frontier)
        decided = scanner.feed(folded, final)
        if not decided:  # no noise in it (the common case)
            return self._plain(scanner.frontier)
        out = []
        for _, start, end, run in decided:
            out.append(self._plain(start))
            replaced = _replacement(run)
            self.marks.append((self.size, start))
            self.size += len(replaced)
            self.marks.append((self.size, end))
            self.done = end
            out.append(replaced)
        out.append(self._plain(scanner.frontier))
        return "".join(out)

    def peek(self, piece: str) -> str | None:
        """What `feed(piece)` would add to the normal form (more text to follow) when it takes out no noise and
        lowercasing keeps every length: the text from `done` on, lowered, position for position. Changes
        nothing; None in the other cases."""
        folded = fold(piece)
        edge = self.scanner.peek(folded)
        if edge is None:
            return None
        scanner = self.scanner
        plain = (scanner.text + folded)[self.done - scanner.base : edge - scanner.base]
        lowered = _lower(plain)
        return lowered if len(lowered) == len(plain) else None

    def _plain(self, end: int) -> str:
        """The text from `done` to `end`, which holds no noise, lowered."""
        if end <= self.done:
            return ""
        text = self.scanner.slice(self.done, end)
        lowered = _lower(text)
        if len(lowered) == len(text):
            self.size += len(text)
        else:  # a character lower() lengthens ("İ"): its parts all map to its start
            at, done = self.size, self.done
            for char in text:
                size = len(char.lower())
                if size != 1:
                    self.marks.extend((at + k, done) for k in range(size))
                    self.marks.append((at + size, done + 1))
                at, done = at + size, done + 1
            self.size = at
        self.done = end
        return lowered

    def origin(self, position: int) -> int:
        """The text's position that `position` of the normal form comes from; positions asked must not go back."""
        at = self._seek(position)
        if at > 256:  # drop the marks no query reaches any more
            del self.marks[:at]
            at = 0
        self._at = at
        normal_at, text_at = self.marks[at]
        return text_at + position - normal_at

    def origin_of(self, position: int) -> int:
        """`origin(position)` without moving on: a look ahead that a later `origin` may pass behind."""
        normal_at, text_at = self.marks[self._seek(position)]
        return text_at + position - normal_at

    def _seek(self, position: int) -> int:
        marks, at = self.marks, self._at
        while at + 1 < len(marks) and marks[at + 1][0] <= position:
            at += 1
        return at
