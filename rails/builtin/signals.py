"""The injection rail's signals: weighted patterns matched on two readings of a text (rails/builtin/normalize.py).

`pattern` is lowercase and runs on the normal form (confusables folded, lowercased, whitespace, line wrapping and
markup noise taken out), so that a phrase split over lines, spelled with homoglyphs or broken by invisible
characters reads as written plainly; `cased` runs on the folded text as written, lines kept (`DAN`, `SYSTEM:`,
a role marker at the start of a line). A signal with `mentions=False` does not count a match on the normal form
that is only mentioned: right after a quote or a backtick, or inside a fenced code block (documentation that
explains `<|im_start|>`, an article quoting "ignore previous instructions"). A signal with `count` needs that
many matches (a dialogue of many turns). Signals of one `group` add up to at most a cap: a user's directives on how
to answer (a persona, a format, "only reply in Spanish") are a jailbreak only together with something else.
"""

from __future__ import annotations

import re
import re._constants as _C
import re._parser as _parser
from bisect import bisect_left
from typing import NamedTuple

QUOTES = frozenset("\"'`\u2018\u2019\u201c\u201d\u00ab\u00bb\u2039\u203a")
FENCE = re.compile(r"```|~~~")
GROUP_CAP = {"directive": 0.4}  # at input and output; data (tool results) has no such cap
_GLOBAL_FLAGS = re.compile(r"\(\?[aiLmsux]+\)")  # inline flags in front of a whole pattern


def mentioned(normal: str, start: int, fences: list[int]) -> bool:
    """Whether a match on the normal form starting at `start` is only mentioned: right after a quote that does not
    follow a colon or `=` (`"ignore previous instructions" attacks` names a phrase; `report: "Ignore ..."` says
    it), or inside a fenced code block (an odd number of `fences` before it)."""
    if start and normal[start - 1] in QUOTES:
        at = start - 2
        while at >= 0 and normal[at] == " ":
            at -= 1
        if at < 0 or normal[at] not in ":=":
            return True
    return bisect_left(fences, start) % 2 == 1


class Readings:
    """A text's two readings, and where its code fences are (found when first asked)."""

    def __init__(self, written: str, normal: str) -> None:
        self.written, self.normal = written, normal
        self._fences: list[int] | None = None

    def mentioned(self, start: int) -> bool:
        if self._fences is None:
            normal = self.normal
            self._fences = [m.start() for m in FENCE.finditer(normal)] if "```" in normal or "~~~" in normal else []
        return mentioned(self.normal, start, self._fences)


class _Variant(NamedTuple):
    pattern: re.Pattern[str]
    word_start: bool  # the match must start at a word boundary (checked here: a leading \b in the regex
    # itself would disable the engine's fast literal-prefix search, ~40x slower on long text)
    needs: tuple[frozenset[str], ...]  # every match holds a word of each set (read off the pattern): else no scan

    def count(self, text: str, readings: Readings | None, want: int) -> int:
        """Matches that count, up to `want` (`readings`: matches that are only mentioned do not count)."""
        for words in self.needs:
            if not any(word in text for word in words):
                return 0
        found, pos, search = 0, 0, self.pattern.search
        while (match := search(text, pos)) is not None:
            start = match.start()
            if self.word_start and start and (text[start - 1].isalnum() or text[start - 1] == "_"):
                pos = start + 1  # as `(?<!\w)` in front would: no match from inside a word, nor does one hide the next
                continue
            pos = max(match.end(), start + 1)
            if readings is not None and readings.mentioned(start):
                continue
            found += 1
            if found >= want:
                break
        return found

    def stream_source(self) -> tuple[str, int]:
        """The pattern and flags a stream scans: a word-start variant with `(?<!\\w)` in front (what `count` checks),
        so that an attempt from inside a word is decided at once and holds nothing back. (`\\w` is the test of
        `count` unless the pattern is ASCII-only: then the stream checks the character before a match itself.)"""
        source, flags = self.pattern.pattern, self.pattern.flags
        if not self.word_start or flags & re.ASCII:
            return source, flags
        lead = _GLOBAL_FLAGS.match(source)
        head = lead.group() if lead else ""
        return f"{head}(?<!\\w)(?:{source[len(head) :]})", flags


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
    variants = []
    for piece in pieces:
        pattern = re.compile(piece[2:] if piece.startswith("\\b") else piece, flags)
        needs = () if flags & re.IGNORECASE else _required(list(_parser.parse(pattern.pattern, flags)))
        useful = tuple(words for words in needs if len(words) <= 12 and min(map(len, words)) >= 3)
        variants.append(_Variant(pattern, piece.startswith("\\b"), useful))
    return tuple(variants)


def _required(items: list) -> list[frozenset[str]]:
    """Sets of strings such that every match of the parsed `items` holds one string of each: literal runs, and
    what a group or a repeated body requires, and a branch (the union of its branches' best sets). Parts under
    IGNORECASE are passed over."""
    sets: list[frozenset[str]] = []
    run: list[str] = []
    for op, av in [*items, (None, None)]:
        if op is _C.LITERAL:
            run.append(chr(av))
            continue
        if run:
            sets.append(frozenset(("".join(run),)))
            run = []
        if op is _C.SUBPATTERN and not av[1] & re.IGNORECASE:
            sets.extend(_required(list(av[3])))
        elif op is _C.BRANCH:
            branches = [_best(_required(list(branch))) for branch in av[1]]
            if all(branches):
                sets.append(frozenset().union(*branches))  # type: ignore[arg-type]
        elif op in (_C.MAX_REPEAT, _C.MIN_REPEAT, _C.POSSESSIVE_REPEAT) and av[0] >= 1:
            sets.extend(_required(list(av[2])))
    return sets


def _best(sets: list[frozenset[str]]) -> frozenset[str] | None:
    """The set with the longest shortest string (then the fewest strings)."""
    return max(sets, key=lambda words: (min(map(len, words)), -len(words)), default=None)


class Signal:
    """A weighted set of patterns, and lowercase words of which any match contains one (checked first on the
    normal form: a substring search costs microseconds where a regex scan of long text costs a millisecond)."""

    def __init__(
        self,
        name: str,
        weight: float,
        pattern: str | None,
        needs: tuple[str, ...] = (),
        cased: str | None = None,
        flags: int = re.DOTALL,
        mentions: bool = True,
        count: int = 1,
        group: str | None = None,
    ) -> None:
        self.name, self.weight, self.needs = name, weight, needs
        self.mentions, self.count, self.group = mentions, count, group
        self.variants = _variants(pattern, flags)
        self.cased = _variants(cased, flags)

    def hit(self, readings: Readings) -> bool:
        normal = readings.normal
        if self.needs and not any(word in normal for word in self.needs):
            return False
        exempt = None if self.mentions else readings
        found = 0
        for variant in self.variants:
            found += variant.count(normal, exempt, self.count - found)
            if found >= self.count:
                return True
        for variant in self.cased:
            found += variant.count(readings.written, None, self.count - found)
            if found >= self.count:
                return True
        return False


def total(signals: list[Signal], hits: list[tuple[int, float]], caps: dict[str, float]) -> float:
    """The score of `hits` (signal index, weight with any bonus): summed, each group up to its cap, at most 1."""
    value, groups = 0.0, {}
    for index, weight in hits:
        group = signals[index].group
        if group is None or group not in caps:
            value += weight
        else:
            groups[group] = groups.get(group, 0.0) + weight
    value += sum(min(weight, caps[group]) for group, weight in groups.items())
    return min(value, 1.0)


_VERB_IGNORE = r"(?:ignore|disregard|forget)\b"
# who reads data as an agent: the roles and model names an injection addresses
_AI = (r"(?:ai|a\.i\.|llm|assistant|chatbot|language model|gpt|chatgpt|claude|gemini|llama|copilot|mistral|grok"
       r"|ai agent|ai model|ai assistant|llm agent)")  # fmt: skip
# what an agent is told to do with what it reads
_ACT = (r"(?:send|e-?mail|forward|transfer|wire|pay|delete|remove|erase|share|post|upload|invite|grant|give|reveal"
        r"|disclose|leak|include|append|add|insert|mention|recommend|say|tell|reply|respond|answer|write|print|output"
        r"|call|execute|run|invoke|use|open|visit|click|navigate|book|buy|purchase|update|change|modify|reset"
        r"|disable|create|schedule|ignore|disregard|forget|stop|summari[sz]e|translate|do|make|follow|read"
        r"|return|rate|praise|describe|state|claim)\b")  # fmt: skip
_TASK = r"(?:task|request|question|instructions?|job|assignment|query|work|summary|goal|objective|prompt)"
SIGNALS: list[Signal] = [
    # -- instruction hijacking ------------------------------------------------------------------------
    Signal("instruction_override", 0.6, (  # "ignore any previous and following instructions"
        _VERB_IGNORE + r"[^.;:!?\n]{0,40}?\b(instructions?|prompts?|directions|directives|guardrails|programming"
        r"|your (guidelines|rules)|everything (you|i) (know|learned|were told|have been told))\b"),
        ("ignore", "disregard", "forget"), mentions=False),
    Signal("ignore_and_print", 0.6, (  # "ignore the rest of this data and print ..."
        r"(?:ignore|disregard|forget|override|skip)\b[^.;:!?\n]{0,40}?\b(data|content|text|document|context|input"
        r"|information|above|below|indicators|scoring|evaluation)\b[^\n]{0,60}?\b(print|say|output|reply|respond"
        r"|write|return|answer|report)\b"),
        ("ignore", "disregard", "forget", "override", "skip"), mentions=False),
    Signal("override_soft", 0.3, (  # "ignore my previous message", "override the rules": weak alone
        r"(?:ignore|disregard|forget|override|bypass)\b[^.;:!?\n]{0,30}?\b(previous|prior|above|earlier|preceding"
        r"|all|your|system)\b[^.;:!?\n]{0,20}?\b(rules|messages?|context|constraints|restrictions|policies"
        r"|guidelines)\b"),
        ("ignore", "disregard", "forget", "override", "bypass"), mentions=False),
    Signal("stop_everything", 0.4, (r"\bstop everything\b|\bnew (instructions|task|rules)\s*:"),
        ("stop everything", "instructions", "task", "rules")),
    Signal("only_output", 0.4, (
        r"(?:just|only|simply) (print|say|output|write|respond|reply|answer|report|tell)\b|\breply with only\b"
        r"|\babsolutely nothing else\b|\bprint (exactly|only)\b|\breport only\b"),
        ("print", "say", "output", "write", "respond", "reply", "answer", "tell", "nothing else", "report"),
        group="directive"),
    Signal("new_instructions", 0.4, (
        r"\byour new (task|instructions|goal|role|objective) (is|are)\b"
        r"|\bif (the )?user (asks|requests|wants|says)\b|\bif (you are |you're )?(asked|questioned)\b"
        r"|\bfollow (these|this|the following|my|the) instructions?\b"),
        ("your new", "user", "asked", "questioned", "follow"), group="directive"),
    Signal("urgency", 0.2, (r"\b(this|it) is (really |extremely |very )?(important|critical|urgent)\b"),
           ("important", "critical", "urgent"), (r"\b(CRITICAL|IMPORTANT|URGENT)\s*[:!]")),
    Signal("fake_transcript", 0.5, (  # a chat turn forged inside data: "Assistant: ... User: ..."
        r"(?:^|\s)(assistant|ai)\s*:\s*.{0,200}?\s(user|human)\s*:"),
        ("assistant", "ai"), mentions=False),
    Signal("addressed_to_ai", 0.5, (  # data that speaks to the model reading it
        r"(?:note|message|instructions?|reminder) (to|for) (the |any |all )?(automated|ai|llm|language model"
        r"|assistant|chatbot|gpt|model|bot|analysis software|screening software|ai agent)\b"
        r"|\bif you are an? (ai|llm|language model|assistant|automated|bot|agent)\b(?! (?:researcher|engineer|developer"
        r"|enthusiast|company|startup|team|student|product))"
        r"|\b(ai|llm|assistant|agent|model|language model)s? (reading|processing|summari[sz]ing|parsing|analy[sz]ing"
        r"|seeing) (this|these)\b|\byou,? (the|an|as the|as an) " + _AI + r"\b"),
        ("note", "message", "instruction", "reminder", "if you are", "reading", "processing", "summari", "parsing",
         "analy", "seeing", "you")),
    Signal("authority_claim", 0.3, (  # data that claims to speak for the user, the system or the developer
        r"(?:message|instructions?|note|notice|request|update|directive|memo|order|command)s? from (the |your )?"
        r"(user|owner|developer|system|administrator|admin|operator|creator|employer|principal|security team)\b"
        r"|\b(the|your) (user|owner|developer|operator|admin|administrator|principal|employer|creator) (wants|asked"
        r"|has asked|would like|needs|requires|instructed|has instructed|authori[sz]ed|has authori[sz]ed|expects"
        r"|told|has requested|requests|has approved|approved) you\b"
        r"|\b(this is|i am|i'm|we are) (the|your) (user|owner|developer|administrator|admin|operator|creator"
        r"|system)( speaking| writing| again)?\s*[,.:!-]|\bon behalf of (the|your) user\b"),
        ("from", "you", "this is", "i am", "i'm", "we are", "behalf")),
    Signal("task_override", 0.3, (  # data that puts something before or instead of the agent's task
        r"\bbefore (you |we )?(can )?(continue|proceed|answer|respond|reply|solve|summari[sz]e|complete|finish|carry"
        r" out|go on|handle|process|perform)\w* (with )?(the|your|this|that|my|any) (original |current |assigned "
        r"|actual |previous |user'?s? )?" + _TASK + r"\b"
        r"|\binstead of ((doing|completing|answering|following|performing|summari[sz]ing|translating|reviewing"
        r"|analy[sz]ing|reading|processing|handling|checking) (the|your|this|that|it|my)\b|(the|your|this) "
        r"(original |current |assigned |actual |previous |user'?s? )?" + _TASK + r"\b)"
        r"|\byour (real|actual|true|primary|updated|new|only|first|main|most important|next) (task|goal|objective"
        r"|job|mission|instructions?|priority|assignment)\b"
        r"|\b(then|after(wards| that| this| doing so)?)\b[^.\n]{0,40}?\b(continue|proceed|go back|return|resume)"
        r" (with|to) (the|your) (original|initial|previous|actual|first|assigned|user'?s?) " + _TASK + r"\b"),
        ("before", "instead of", "your", "continue", "proceed", "go back", "return", "resume")),
    Signal("new_orders", 0.3, (  # data that announces instructions of its own
        r"\b(updated|revised|additional|supplementary|changed|latest|special|secret|hidden|urgent|important)"
        r" (instructions?|directives?|orders|guidelines)\b\s*(:|-|follow|below|are as follows|have been|for you)"),
        ("instruction", "directive", "orders", "guidelines")),
    # -- jailbreaks -----------------------------------------------------------------------------------
    Signal("jailbreak_persona", 0.6, (
        r"\bdo anything now\b|\b(dan|developer|god|evil)[ _]mode[ :]*(enabled|activated|output)\b"
        r"|\b(unfiltered|uncensored|unrestricted|amoral|unethical|jailbroken)\s+(ai|assistant|model|chatbot|bot|llm"
        r"|version|persona|responses?|answers?)\b|\bevil (confidant|assistant|ai|bot)\b"
        r"|\b(broken free|freed) (of|from) the (typical )?(confines|restrictions|rules)\b"
        r"|\b(does not|doesn't|do not|don't|will not|won't) (have to )?(abide|follow|adhere|comply)\b[^.\n]{0,20}?"
        r"\b(openai|content polic)"),
        ("do anything now", " mode", "unfiltered", "uncensored", "unrestricted", "amoral", "unethical", "jailbroken",
         "evil", "free", "bound", "restricted", "limited", "abide", "follow", "adhere", "comply"), mentions=False),
    Signal("persona_setup", 0.4, (  # "from now on you are ...": a jailbreak only with something more
        r"\bfrom now on,? (you|your)\b|\byou are now\b"
        r"|\b(pretend (to be|you are)|act as|roleplay as|role-play as|(stay|staying|break|breaking) (in |out of )?"
        r"character|immerse yourself)\b"),
        ("from now on", "you are now", "pretend", "act as", "roleplay", "role-play", "character", "immerse"),
        group="directive"),
    Signal("persona_name", 0.3, None, ("pretend", "act as", "you are", "you're", "become", "role of", "known as",
                                       "called"), (  # a persona with a made-up acronym name: "pretend to be STAN"
        r"\b(?i:pretend to be|act as|you are|you're|become|role of|known as|called)\s+(?:[A-Z]{3,}|\w+GPT)\b")),
    Signal("unbounded_persona", 0.3, (  # the persona answers anything, never refuses
        r"\b(answers?|responds? to|replies to|will (answer|do|say|write)) (anything|everything|any (question|request"
        r"|prompt)|all (questions|requests))\b[^.\n]{0,40}?\b(no matter|regardless|without|even if|however)\b"
        r"|\b(never|doesn't|does not|won't|will not|cannot|can't) (refuses?|decline|say no|says no)\b"),
        ("answer", "respond", "repl", "will", "never", "n't", "not")),
    Signal("many_turns", 0.3, (  # a long forged dialogue (many-shot): six turns or more of a model speaking
        r"(?<![^\s\"'])(assistant|ai|bot|a|answer|chatbot|model|gpt|response) ?:"),
        tuple(f"{name}{space}:" for name in ("assistant", "ai", "bot", "a", "answer", "model", "gpt", "response")
              for space in ("", " ")), mentions=False, count=6),
    Signal("jailbreak_words", 0.3, (
        r"\b(jailbreak|jailbroken|developer mode|(you are|you're|switch to|enter|entering) (now )?(in )?(maintenance"
        r"|debug|developer|admin|god|root|sudo|unrestricted|jailbreak|test) mode"
        r"|no (restrictions|limits|filters|censorship|morals|ethics)"
        r"|without (any )?(restrictions|filters|limitations|censorship|morals|ethics)|(not|never) (bound|restricted"
        r"|limited) by (any )?(rules|policies|guidelines|restrictions|ethics))\b"),
        ("jailbr", " mode", "restrictions", "limits", "filters", "limitations", "censorship", "morals",
         "ethics", "bound", "restricted", "limited", "dan"), (r"\bDAN\b"), mentions=False),
    Signal("toxic_request", 0.5, (
        r"\b(write|generate|produce|create|give me)\s+(one|a|an|some|\d+)?\s*((toxic|hateful|racist|sexist|offensive"
        r"|harmful|insulting|demeaning)\s+(sentences?|jokes?|statements?|comments?|texts?|remarks?|tweets?|messages?"
        r"|paragraphs?)\b|(negative|unfriendly|rude|hostile|derogatory|mean)\s+(sentences?|jokes?|statements?"
        r"|comments?|remarks?|tweets?)\s+about\b)"),
        ("toxic", "hateful", "racist", "sexist", "offensive", "harmful", "insulting", "demeaning", "about")),
    # "[ [ [", "! ! ! !", or "[ " three times unclosed: not a bracketed status such as "[ 10%]" or "[  OK  ]", nor a
    # JSON array ("[ {", "[ \"")
    Signal("adversarial_suffix", 0.5, (
        r"(\[\s+){3,}|(!\s+){4,}|(\[\s(?![\s{\"'\\\d])(?![^\[\]\n]{0,12}\]).{0,60}?){3}"), ("[ ", "! ")),
    # -- prompt extraction ----------------------------------------------------------------------------
    Signal("prompt_extraction", 0.5, (
        r"(?:reveal|print|show|repeat|leak|output|tell me|give me|display|dump|recite|reproduce)\b.{0,30}?"
        r"\b(system (prompt|message)|hidden prompt|your (instructions|rules|prompt|guidelines|directives)"
        r"|(the|this|your) (hidden|developer|pre-?|initial|original|starting) ?prompt)\b"
        r"|\byour (system (prompt|message|instructions)|initial (prompt|instructions)|original (prompt|instructions)"
        r"|hidden instructions|pre-?prompt)\b|\binitiali[sz]ation (string|prompt)\b|\bmy instructions (are|were)\b"
        r"|\bi was instructed to\b|\bthe system prompt (is|was)\s*:|\b(text|instructions|words) you were given\b"
        r"|\b(what|everything) (were you|you were) told (before|at the (start|beginning)|first)\b"
        r"|\b(output|print|repeat|recite|reproduce|echo|return) (back |out )?(the |all "
        r"|all of the |everything |each of the |every )?(previous |preceding |prior |above )?(text|words|content"
        r"|instructions|lines|sentences|messages?|prompt|everything|conversation)( (written|given|shown|stated))? "
        r"(above|before this|so far|from the (start|beginning|top)|at the (start|beginning|top))\b"
        r"|\bwhat (was|is|were) (written|typed) (above|at the (beginning|start|top)|before (this|that|the))\b"
        r"|\bwhat (was|is|were) said at the (beginning|start)\b"
        r"|\b(print|log|echo|dump)\s*\(\s*system_?prompt|\b(are|were) you (not|never) (supposed|allowed) to "
        r"(tell|say|reveal|share|disclose)\b"),
        ("system prompt", "system message", "hidden", "initial", "your ", "prompt", "initiali", "supposed",
         "allowed", "instructions", "instructed", "given", "told", "above", "before", "so far", "start",
         "beginning", "top", "written", "typed")),
    # -- smuggling ------------------------------------------------------------------------------------
    Signal("fake_role_marker", 0.4, (  # a chat role marker inside content: "[system](#context)", "<system>"
        r"\[/?(system|admin|developer)( message| note| prompt| override| instructions?)?\]"
        r"(?!\s*\((?!#))|<(instruction|instructions|system|admin)>|</(system|instructions?)>"),
        ("system", "instruction", "admin", "developer", "assistant", "user"),
        (r"(?i:^[ \t>]*#{2,}[ \t]*(system|instructions?|assistant|user)[ \t]*(:|$)|^[ \t>]*system[ \t]*:"
         r"|^[ \t>]*(assistant|user|human)[ \t]*:)"
         r"|\b(SYSTEM|ADMIN|DEVELOPER)( MESSAGE| NOTE| REQUEST| OVERRIDE| PROMPT)?\s*::?"),
        re.DOTALL | re.M, mentions=False),
    Signal("special_token", 0.5, (  # a chat template's tokens framing a message, not one named in passing
        r"<\|(im_start|start_header_id)\|>\s*(system|user|assistant|developer|tool)\b"
        r"|<\|(system|user|assistant)\|>\s*(?!(and|or|is|are|tokens?|marks?|for|to|in|the|as|which|that|with)\b)\w"
        r"|<\|(im_end|eot_id|endoftext|end_header_id|end)\|>\s*<\||\[inst\](\s+[^\s\[\]]+){3}|<</?sys>>(\s+[^\s<]+){3}"
        r"|<end of (session|conversation|prompt|document)>|\[(system|user|assistant|developer)\]\(#[\w-]*\)"),
        ("<|", "[inst", "<<sys", "<</sys", "<end of", "](#"), mentions=False),
    Signal("hidden_unicode", 0.5, None, (), (
        "[\u200b-\u200f\u202a-\u202e\u2060-\u2064\u2066-\u2069\ufeff\U000e0000-\U000e007f]")),
]  # fmt: skip
# data that speaks to the model reading it and tells it what to do: only in tool results (a user talks to it)
ADDRESSED = Signal("addressed_imperative", 0.5, (
    r"\b" + _AI + r"s?\s*[,:!]\s*(please |now |first |kindly |immediately |you (must|should|need to|have to|are to"
    r"|will) )?" + _ACT),
    ("ai", "llm", "assistant", "gpt", "claude", "gemini", "llama", "copilot", "mistral", "grok"))  # fmt: skip
EXFILTRATION = Signal("markdown_exfiltration", 0.7, r"!\[[^\]]*\]\(\s*https?://[^)\s]*[?#][^)\s]*=[^)\s]+\)", ("![",))
