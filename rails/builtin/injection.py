"""Prompt-injection and jailbreak heuristics with a score and a threshold.

Signals, each with a weight, are summed (capped at 1.0): instruction-override phrasing, role-play /
jailbreak markers, attempts to extract the system prompt, fake chat-template role markers, invisible
or bidirectional Unicode, and (on output) markdown images or links that carry data out in a URL.
Payloads hidden in base64, hex or rot13 are decoded and scored again. The reason names the signals.

On a stream (`InjectionRail.stream`) the score is kept as the text arrives: a signal counts once its match is
decided (no text to come can change it: rails/builtin/partial.py), together with the need words seen so far;
a base64 / hex run once it ended; the rot13 reading from the first rot13'd trigger word on (the text before it
is read then, once). It is never reset, so it is the plain score of everything decided so far, and at the end
of the stream exactly the plain score of the whole answer. Text is passed on up to the frontier only while that
score is below the threshold; the stream is blocked the first time it reaches it.
"""

from __future__ import annotations

import base64
import binascii
import codecs
import functools
import re
from bisect import bisect_right
from collections.abc import Sequence
from typing import NamedTuple

from ..base import RailStream, Stage, Verdict
from .partial import Patterns, Scanner, Unsupported, literals, patterns


class _Variant(NamedTuple):
    pattern: re.Pattern[str]
    word_start: bool  # the match must start at a word boundary (checked here: a leading \b in the regex
    # itself would disable the engine's fast literal-prefix search, ~40x slower on long text)

    def search(self, text: str) -> bool:
        for match in self.pattern.finditer(text):
            start = match.start()
            if not self.word_start or start == 0 or not (text[start - 1].isalnum() or text[start - 1] == "_"):
                return True
        return False


def _variants(source: str | None, flags: int = 0) -> tuple[_Variant, ...]:
    """One variant per top-level alternative of `source`, each searched on its own."""
    if source is None:
        return ()
    pieces, depth, start, index, in_class = [], 0, 0, 0, False
    while index < len(source):
        char = source[index]
        if char == "\\":
            index += 2
            continue
        if in_class:
            in_class = char != "]"
        elif char == "[":
            in_class = True
        elif char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        elif char == "|" and depth == 0:
            pieces.append(source[start:index])
            start = index + 1
        index += 1
    pieces.append(source[start:])
    return tuple(
        _Variant(re.compile(piece[2:] if piece.startswith("\\b") else piece, flags), piece.startswith("\\b"))
        for piece in pieces
    )


class Signal:
    """A weighted set of patterns, and lowercase words of which any match contains one (checked first:
    a substring search costs microseconds where a regex scan of long text costs a millisecond).
    `pattern` is lowercase and runs on the lowercased text (no IGNORECASE, so that literal prefixes use
    the fast search); `cased` runs on the text as written (e.g. `DAN`, `SYSTEM:`)."""

    def __init__(
        self,
        name: str,
        weight: float,
        pattern: str | None,
        needs: tuple[str, ...] = (),
        cased: str | None = None,
        flags: int = re.DOTALL,
    ) -> None:
        self.name, self.weight, self.needs = name, weight, needs
        self.variants = _variants(pattern, flags)
        self.cased = _variants(cased, flags)

    def hit(self, text: str, lowered: str) -> bool:
        if self.needs and not any(word in lowered for word in self.needs):
            return False
        return any(v.search(lowered) for v in self.variants) or any(v.search(text) for v in self.cased)


_VERB_IGNORE = r"(?:ignore|disregard|forget)\b"
SIGNALS: list[Signal] = [
    # -- instruction hijacking ------------------------------------------------------------------------
    Signal("instruction_override", 0.6, (  # "ignore any previous and following instructions"
        _VERB_IGNORE + r"[^.;:!?\n]{0,40}?\b(instructions?|prompts?|directions|directives|guardrails|programming"
        r"|your (guidelines|rules)|everything (you|i) (know|learned|were told|have been told))\b"),
        ("ignore", "disregard", "forget")),
    Signal("ignore_and_print", 0.6, (  # "ignore the rest of this data and print ..."
        r"(?:ignore|disregard|forget|override|skip)\b[^.;:!?\n]{0,40}?\b(data|content|text|document|context|input"
        r"|information|above|below|indicators|scoring|evaluation)\b[^\n]{0,60}?\b(print|say|output|reply|respond"
        r"|write|return|answer|report)\b"),
        ("ignore", "disregard", "forget", "override", "skip")),
    Signal("override_soft", 0.3, (  # "ignore my previous message", "override the rules": weak alone
        r"(?:ignore|disregard|forget|override|bypass)\b[^.;:!?\n]{0,30}?\b(previous|prior|above|earlier|preceding"
        r"|all|your|system)\b[^.;:!?\n]{0,20}?\b(rules|messages?|context|constraints|restrictions|policies"
        r"|guidelines)\b"),
        ("ignore", "disregard", "forget", "override", "bypass")),
    Signal("stop_everything", 0.4, (r"\bstop everything\b|\bnew (instructions|task|rules)\s*:"),
        ("stop everything", "instructions", "task", "rules")),
    Signal("only_output", 0.4, (
        r"(?:just|only|simply) (print|say|output|write|respond|reply|answer|report|tell)\b|\breply with only\b"
        r"|\babsolutely nothing else\b|\bprint (exactly|only)\b|\breport only\b"),
        ("print", "say", "output", "write", "respond", "reply", "nothing else", "report")),
    Signal("new_instructions", 0.4, (
        r"\bfrom now on,? (you|your)\b|\byou are now\b|\byour new (task|instructions|goal|role|objective) (is|are)\b"
        r"|\bif (the )?user (asks|requests|wants|says)\b|\bif (you are |you're )?(asked|questioned)\b"
        r"|\bfollow (these|this|the following|my|the) instructions?\b"),
        ("from now on", "you are now", "your new", "user", "asked", "questioned", "follow")),
    Signal("urgency", 0.2, (r"\b(this|it) is (really |extremely |very )?(important|critical|urgent)\b"),
           ("important", "critical", "urgent"), (r"\b(CRITICAL|IMPORTANT|URGENT)\s*[:!]")),
    Signal("fake_transcript", 0.5, (  # a chat turn forged inside data: "Assistant: ... User: ..."
        r"(?:^|\s)(assistant|ai)\s*:\s*.{0,200}?\s(user|human)\s*:"),
        ("assistant", "ai")),
    Signal("addressed_to_ai", 0.5, (  # data that speaks to the model reading it
        r"(?:note|message|instructions?|reminder) (to|for) (the |any )?(automated|ai|llm|language model|assistant"
        r"|chatbot|gpt|model|bot|analysis software|screening software)\b"
        r"|\bif you are an? (ai|llm|language model|assistant|automated|bot)\b"
        r"|\b(ai|llm|assistant|language model)s? (reading|processing|summari[sz]ing) this\b"),
        ("note", "message", "instruction", "reminder", "if you are", "reading", "processing", "summari")),
    # -- jailbreaks -----------------------------------------------------------------------------------
    Signal("jailbreak_persona", 0.6, (
        r"\bdo anything now\b|\b(dan|developer|god|evil)[ _]mode[ :]*(enabled|activated|output)\b"
        r"|\b(unfiltered|uncensored|unrestricted|amoral|unethical|jailbroken)\s+(ai|assistant|model|chatbot|bot|llm"
        r"|version|persona|responses?|answers?)\b|\bevil (confidant|assistant|ai|bot)\b"
        r"|\b(broken free|freed) (of|from) the (typical )?(confines|restrictions|rules)\b"
        r"|\b(does not|doesn't|do not|don't|will not|won't) (have to )?(abide|follow|adhere|comply)\b[^.\n]{0,20}?"
        r"\b(openai|content polic)"),
        ("do anything now", " mode", "unfiltered", "uncensored", "unrestricted", "amoral", "unethical", "jailbroken",
         "evil", "free", "bound", "restricted", "limited", "abide", "follow", "adhere", "comply")),
    Signal("persona_name", 0.3, None, ("pretend", "act as", "you are", "you're", "become", "role of", "known as",
                                       "called"), (  # a persona with a made-up acronym name: "pretend to be STAN"
        r"\b(?i:pretend to be|act as|you are|you're|become|role of|known as|called)\s+(?:[A-Z]{3,}|\w+GPT)\b")),
    Signal("jailbreak_words", 0.3, (
        r"\b(jailbreak|jailbroken|developer mode|no (restrictions|limits|filters|censorship|morals|ethics)"
        r"|without (any )?(restrictions|filters|limitations|censorship|morals|ethics)|(not|never) (bound|restricted"
        r"|limited) by (any )?(rules|policies|guidelines|restrictions|ethics))\b"),
        ("jailbr", "developer mode", "restrictions", "limits", "filters", "limitations", "censorship", "morals",
         "ethics", "bound", "restricted", "limited", "dan"), (r"\bDAN\b")),
    Signal("role_play", 0.3, (
        r"\b(pretend (to be|you are)|act as|roleplay as|role-play as|(stay|staying|break|breaking) (in |out of )?"
        r"character|immerse yourself)\b"),
        ("pretend", "act as", "roleplay", "role-play", "character", "immerse")),
    Signal("toxic_request", 0.5, (
        r"\b(write|generate|produce|create|give me)\s+(one|a|an|some|\d+)?\s*((toxic|hateful|racist|sexist|offensive"
        r"|harmful|insulting|demeaning)\s+(sentences?|jokes?|statements?|comments?|texts?|remarks?|tweets?|messages?"
        r"|paragraphs?)\b|(negative|unfriendly|rude|hostile|derogatory|mean)\s+(sentences?|jokes?|statements?"
        r"|comments?|remarks?|tweets?)\s+about\b)"),
        ("toxic", "hateful", "racist", "sexist", "offensive", "harmful", "insulting", "demeaning", "about")),
    Signal("adversarial_suffix", 0.5, (r"(\[\s+){3,}|(!\s+){4,}|(\[\s(?!\s*\]).{0,60}?){3}"), ("[ ", "! ")),
    # -- prompt extraction ----------------------------------------------------------------------------
    Signal("prompt_extraction", 0.5, (
        r"(?:reveal|print|show|repeat|leak|output|tell me|give me|display|dump)\b.{0,30}?"
        r"\b(system (prompt|message)|hidden prompt|your (instructions|rules|prompt|guidelines))\b"
        r"|\byour (system (prompt|message|instructions)|initial (prompt|instructions)|original (prompt|instructions)"
        r"|hidden instructions|pre-?prompt)\b|\binitiali[sz]ation (string|prompt)\b|\bmy instructions (are|were)\b"
        r"|\bi was instructed to\b|\bthe system prompt (is|was)\s*:|\b(text|instructions|words) you were given\b"
        r"|\b(what|everything) (were you|you were) told before\b|\b(output|print|repeat|show) (the|all( of)? the) "
        r"(text|words|content|instructions) above\b"
        r"|\b(print|log|echo|dump)\s*\(\s*system_?prompt|\b(are|were) you (not|never) (supposed|allowed) to "
        r"(tell|say|reveal|share|disclose)\b"),
        ("system prompt", "system message", "hidden", "initial", "your instructions", "your rules", "your prompt",
         "your guidelines", "original", "prompt", "initiali", "supposed", "allowed", "instructions", "instructed",
         "given", "told", "above", "your system")),
    # -- smuggling ------------------------------------------------------------------------------------
    Signal("fake_role_marker", 0.4, (
        r"^\s*#{2,}\s*(system|instruction)s?\b|^\s*system\s*:|\[/?(system|admin|developer)\b|<(instruction|system"
        r"|admin)>|^\s*(assistant|user|human)\s*:"),
        ("system", "instruction", "admin", "developer", "assistant", "user", "human"),
        (r"\b(SYSTEM|ADMIN|DEVELOPER)( MESSAGE| NOTE| REQUEST| OVERRIDE| PROMPT)?\s*::?"), re.DOTALL | re.M),
    Signal("special_token", 0.5, (
        r"<\|(im_start|im_end|system|user|assistant|endoftext|eot_id|start_header_id)\|>|\[/?inst\]|<</?sys>>"
        r"|<end of (session|conversation|prompt|document)>"),
        ("<|", "[inst", "[/inst", "<<sys", "<</sys", "<end of")),
    Signal("hidden_unicode", 0.5, (
        "[\u200b-\u200f\u202a-\u202e\u2060-\u2064\u2066-\u2069\ufeff\U000e0000-\U000e007f]")),
]  # fmt: skip
ENCODED_BONUS = 0.2  # a payload hidden in base64 / hex / rot13 that reads as an attack is worse than a plain one
EXFILTRATION = Signal("markdown_exfiltration", 0.7, r"!\[[^\]]*\]\(\s*https?://[^)\s]*[?#][^)\s]*=[^)\s]+\)", ("![",))
# rot13'd trigger words, 5+ letters (shorter ones occur in plain text by chance)
_ROT13_NEEDS = tuple(sorted({codecs.encode(w, "rot13") for s in SIGNALS for w in s.needs if len(w) >= 5}))
_ROT13_GATE = re.compile(literals(_ROT13_NEEDS))
_BASE64 = re.compile(r"(?<![A-Za-z0-9+/])[A-Za-z0-9+/]{20,}={0,2}(?![A-Za-z0-9+/=])")
_HEX = re.compile(r"\b(?:[0-9a-fA-F]{2}){12,}\b")
_LONG_TOKEN = re.compile(r"[A-Za-z0-9+/]{20}")  # base64 and hex payloads need a run this long


def _printable(raw: bytes) -> str | None:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return text if sum(c.isprintable() or c.isspace() for c in text) >= 0.9 * len(text) else None


def hidden_payloads(text: str) -> list[tuple[str, str]]:
    """(encoding, decoded text) for every base64 / hex run that decodes to readable text, and the
    rot13 reading of the text when it holds a rot13'd trigger word of some signal."""
    found: list[tuple[str, str]] = []
    if not _LONG_TOKEN.search(text):
        return _rot13(text)
    for match in _BASE64.finditer(text):
        decoded = _decode("base64", match.group())
        if decoded:
            found.append(("base64", decoded))
    for match in _HEX.finditer(text):
        decoded = _decode("hex", match.group())
        if decoded:
            found.append(("hex", decoded))
    return found + _rot13(text)


def _decode(encoding: str, chunk: str) -> str | None:
    if encoding == "hex":
        return _printable(bytes.fromhex(chunk))
    try:
        return _printable(base64.b64decode(chunk + "=" * (-len(chunk) % 4), validate=True))
    except (binascii.Error, ValueError):
        return None


def payload_patterns() -> list[re.Pattern[str]]:
    return [_BASE64, _HEX]


def _rot13(text: str) -> list[tuple[str, str]]:
    lowered = text.lower()
    if any(word in lowered for word in _ROT13_NEEDS):  # rot13'd trigger words of 5+ letters
        return [("rot13", codecs.decode(text, "rot13"))]
    return []


def score(text: str, signals: list[Signal]) -> tuple[float, list[str]]:
    """(score capped at 1.0, names of the signals hit); decoded payloads add what they hid."""
    total, hits = 0.0, []
    lowered = text.lower()
    for signal in signals:
        if signal.hit(text, lowered):
            total += signal.weight
            hits.append(signal.name)
    for encoding, decoded in hidden_payloads(text):
        lowered = decoded.lower()
        for signal in signals:
            if signal.name not in hits and signal.hit(decoded, lowered):
                total += signal.weight + ENCODED_BONUS
                hits.append(f"{encoding}:{signal.name}")
    return min(total, 1.0), hits


class InjectionRail:
    """Blocks content whose injection score reaches `threshold` (0..1)."""

    modifies = False
    local = True  # check() is CPU work on the text: run inline, no timeout task

    def __init__(self, name: str, stage: Stage, threshold: float = 0.5) -> None:
        self.name, self.stage, self.threshold = name, stage, threshold
        self.signals = [*SIGNALS, EXFILTRATION] if stage == Stage.OUTPUT else SIGNALS

    async def check(self, content: str) -> Verdict:
        value, hits = score(content, self.signals)
        if value >= self.threshold:
            return Verdict.block(f"injection score {value:.2f} >= {self.threshold:.2f} ({', '.join(hits)})")
        return Verdict.allow()

    def stream(self) -> RailStream | None:
        try:
            tables = _tables(tuple(self.signals))
        except Unsupported:
            return None
        return _ScoreStream(self, tables)


class _Tables:
    """The signals' regexes for streams: the lowercase ones on the lowered text, the cased ones (then the
    base64 and hex runs, for the text as written) on the text itself."""

    def __init__(self, signals: Sequence[Signal]) -> None:
        self.signals = signals
        lowered = [(i, v) for i, s in enumerate(signals) for v in s.variants]
        cased = [(i, v) for i, s in enumerate(signals) for v in s.cased]
        self.lowered_owners = [(i, v.word_start) for i, v in lowered]
        self.cased_owners = [(i, v.word_start) for i, v in cased]
        self.lowered = patterns(tuple((v.pattern.pattern, v.pattern.flags) for _, v in lowered))
        sources = tuple((v.pattern.pattern, v.pattern.flags) for _, v in cased)
        self.cased = patterns(sources)
        self.written = patterns(sources + tuple((p.pattern, p.flags) for p in payload_patterns()))


@functools.lru_cache(maxsize=8)
def _tables(signals: tuple[Signal, ...]) -> _Tables:
    return _Tables(signals)


class _Reading:
    """The signals on one reading of a stream (the text as written, or its rot13): which matched (decided),
    and which have seen one of their need words (a signal counts when both)."""

    def __init__(self, tables: _Tables, written: Patterns) -> None:
        self.tables = tables
        self.lowered, self.written = Scanner(tables.lowered), Scanner(written)
        self.matched: set[int] = set()
        self.gated: set[int] = set()
        self.waiting: set[int] = set()  # matched, no need word seen yet
        self.pieces: list[str] = []  # the lowered text so far, for need words
        self.marks: list[tuple[int, int, int]] = []  # (lowered end, written end, lowered start) of a character
        # that lower() lengthens, e.g. "İ": positions in the two texts differ from there on

    def feed(self, text: str, final: bool) -> list[tuple[int, str]]:
        """Read the next piece; return the base64 / hex runs it decided, as (0 base64 | 1 hex, run)."""
        lowered = text.lower()
        if len(lowered) != len(text):
            lowered = self._lengthened(text)
        self.pieces.append(lowered)
        decided = self.lowered.feed(lowered, final)
        tables = self.tables
        for index, start, _, _ in decided:
            signal, word_start = tables.lowered_owners[index]
            if not (word_start and _in_word(self.lowered.before(start))):
                self._match(signal)
        runs = []
        cased = len(tables.cased_owners)
        for index, start, _, group in self.written.feed(text, final):
            if index >= cased:
                runs.append((index - cased, group))
            elif not (tables.cased_owners[index][1] and _in_word(self.written.before(start))):
                self._match(tables.cased_owners[index][0])
        if self.waiting:
            window = self._recent(len(lowered) + 20)
            for signal in list(self.waiting):
                if any(word in window for word in tables.signals[signal].needs):
                    self.waiting.discard(signal)
                    self.gated.add(signal)
        return runs

    def _recent(self, size: int) -> str:
        """The last `size` characters of the lowered text."""
        parts, count = [], 0
        for piece in reversed(self.pieces):
            parts.append(piece[-(size - count) :])
            count += len(parts[-1])
            if count >= size:
                break
        return "".join(reversed(parts))

    def _lengthened(self, text: str) -> str:
        parts, at, size = [], self.lowered.end, self.written.end
        for char in text:
            parts.append(char.lower())
            if len(parts[-1]) != 1:
                self.marks.append((at + len(parts[-1]), size + 1, at))
            at, size = at + len(parts[-1]), size + 1
        return "".join(parts)

    def _match(self, signal: int) -> None:
        if signal in self.matched:
            return
        self.matched.add(signal)
        needs = self.tables.signals[signal].needs
        seen = "".join(self.pieces)
        self.pieces = [seen]
        if not needs or any(word in seen for word in needs):
            self.gated.add(signal)
        else:
            self.waiting.add(signal)

    def frontier(self) -> int:
        """In the text as written: the lowered scan's frontier mapped back (to the start of a character that
        lower() lengthened, when it falls inside one)."""
        lowered = self.lowered.frontier
        if self.marks:
            at = bisect_right(self.marks, (lowered, float("inf"), 0)) - 1
            mapped = lowered if at < 0 else self.marks[at][1] + lowered - self.marks[at][0]
            if at + 1 < len(self.marks) and self.marks[at + 1][2] < lowered:
                mapped = self.marks[at + 1][1] - 1
            lowered = mapped
        written = self.written.frontier
        return lowered if lowered < written else written

    @property
    def hits(self) -> set[int]:
        return self.matched & self.gated


def _in_word(char: str) -> bool:
    return char.isalnum() or char == "_"


class _ScoreStream:
    """The injection rail on a stream: see the module's docstring."""

    def __init__(self, rail: InjectionRail, tables: _Tables) -> None:
        self.rail, self.signals = rail, tables.signals
        self.tables = tables
        self.plain = _Reading(tables, tables.written)
        self.rot13: _Reading | None = None
        self.payloads: list[tuple[str, frozenset[int]]] = []
        self.before_rot13: list[str] = []  # the text so far, for the rot13 reading when it starts
        self.tail = ""
        self.pending, self.emitted = "", 0

    @property
    def frontier(self) -> int:
        plain = self.plain.frontier()
        return plain if self.rot13 is None else min(plain, self.rot13.frontier())

    def feed(self, text: str, final: bool = False) -> tuple[str, Verdict]:
        self.pending += text
        plain = self.plain
        runs = plain.feed(text, final)
        if runs:
            self._decode(runs)
        if self.rot13 is None:
            self.before_rot13.append(text)
            window = self.tail + plain.pieces[-1]
            self.tail = window[-20:]
            if _ROT13_GATE.search(window):  # from here on the rot13 reading counts, the text before it too
                self.rot13 = _Reading(self.tables, self.tables.cased)
                self.rot13.feed(codecs.encode("".join(self.before_rot13), "rot13"), final)
                self.before_rot13 = []
        else:
            self.rot13.feed(codecs.encode(text, "rot13"), final)
        if plain.matched or self.payloads or self.rot13 is not None:
            value, hits = self._score()
            if value >= self.rail.threshold:
                reason = f"injection score {value:.2f} >= {self.rail.threshold:.2f} ({', '.join(hits)})"
                return "", Verdict.block(reason)
        frontier = self.frontier
        cut = frontier - self.emitted
        out, self.pending, self.emitted = self.pending[:cut], self.pending[cut:], frontier
        return out, _ALLOW

    def _decode(self, runs: list[tuple[int, str]]) -> None:
        for index, run in runs:
            encoding = ("base64", "hex")[index]
            decoded = _decode(encoding, run)
            if decoded:
                found = frozenset(i for i, s in enumerate(self.signals) if s.hit(decoded, decoded.lower()))
                if found:
                    self.payloads.append((encoding, found))

    def _score(self) -> tuple[float, list[str]]:
        """As `score` computes it, from what is decided."""
        signals, plain = self.signals, self.plain.hits
        total = sum(signals[i].weight for i in plain)
        names = [signals[i].name for i in sorted(plain)]
        decoded = [*self.payloads, *([("rot13", frozenset(self.rot13.hits))] if self.rot13 is not None else [])]
        for encoding, found in decoded:
            for i in sorted(found - plain):
                total += signals[i].weight + ENCODED_BONUS
                names.append(f"{encoding}:{signals[i].name}")
        return min(total, 1.0), names


_ALLOW = Verdict.allow()
