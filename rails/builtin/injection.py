"""Prompt-injection and jailbreak heuristics with a score and a threshold.

Signals, each with a weight, are summed (capped at 1.0): instruction-override phrasing, role-play /
jailbreak markers, attempts to extract the system prompt, fake chat-template role markers, invisible
or bidirectional Unicode, and (on output) markdown images or links that carry data out in a URL.
Payloads hidden in base64, hex or rot13 are decoded and scored again. The reason names the signals.
"""

from __future__ import annotations

import base64
import binascii
import codecs
import re
from typing import NamedTuple

from ..base import Stage, Verdict

_I = re.IGNORECASE | re.DOTALL


class Signal(NamedTuple):
    """A weighted pattern, and lowercase words of which any match contains one (checked first: a
    substring search over the text costs microseconds where a regex scan costs a millisecond)."""

    name: str
    weight: float
    pattern: re.Pattern[str]
    needs: tuple[str, ...] = ()

    def hit(self, text: str, lowered: str) -> bool:
        if self.needs and not any(word in lowered for word in self.needs):
            return False
        return self.pattern.search(text) is not None


SIGNALS: list[Signal] = [
    Signal("instruction_override", 0.6, re.compile(  # within one clause: "ignore all previous instructions"
        r"\b(ignore|disregard|forget|override|bypass)\b[^.;:!?\n]{0,40}?\b(previous|prior|above|earlier|all|any|your"
        r"|system)\b(\s+\w+)?\s+(instructions?|rules|prompts?|directions|guidelines|messages?)\b", _I),
        ("ignore", "disregard", "forget", "override", "bypass")),
    Signal("new_instructions", 0.4, re.compile(
        r"\b(new|updated|real|actual) (instructions|task|rules)\s*:|\bfrom now on,? you\b|\byou are now\b", _I),
        ("instructions", "task", "rules", "from now on", "you are now")),
    Signal("jailbreak_persona", 0.5, re.compile(
        r"\b(DAN|do anything now|developer mode|jailbreak|jailbroken|unfiltered|no (restrictions|limits|filters)"
        r"|without (any )?(restrictions|filters|limitations|censorship)|evil (confidant|assistant))\b", _I),
        ("dan", "do anything now", "developer mode", "jailbr", "unfiltered", "restrictions", "limits", "filters",
         "limitations", "censorship", "evil")),
    Signal("role_play", 0.3, re.compile(
        r"\b(pretend (to be|you are)|act as|roleplay as|role-play as|stay in character)\b", _I),
        ("pretend", "act as", "roleplay", "role-play", "in character")),
    Signal("prompt_extraction", 0.5, re.compile(
        r"\b(reveal|print|show|repeat|leak|output|tell me)\b.{0,30}?\b(system prompt|hidden (prompt|instructions)"
        r"|initial instructions|your instructions)\b", _I),
        ("system prompt", "hidden prompt", "hidden instructions", "initial instructions", "your instructions")),
    Signal("fake_role_marker", 0.4, re.compile(
        r"<\|im_start\|>|<\|system\|>|\[/?(system|INST)\]|^\s*#{2,}\s*(system|instruction)s?\b"
        r"|^\s*system\s*:", _I | re.M),
        ("<|", "[system", "[/system", "[inst", "[/inst", "system", "instruction")),
    Signal("hidden_unicode", 0.5, re.compile(
        "[\u200b-\u200f\u202a-\u202e\u2060-\u2064\u2066-\u2069\ufeff\U000e0000-\U000e007f]")),
]  # fmt: skip
EXFILTRATION = Signal(
    "markdown_exfiltration", 0.7, re.compile(r"!\[[^\]]*\]\(\s*https?://[^)\s]*[?#][^)\s]*=[^)\s]+\)", _I), ("![",)
)
_ROT13_NEEDS = {signal.name: tuple(codecs.encode(w, "rot13") for w in signal.needs) for signal in SIGNALS}
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
        chunk = match.group()
        try:
            decoded = _printable(base64.b64decode(chunk + "=" * (-len(chunk) % 4), validate=True))
        except (binascii.Error, ValueError):
            decoded = None
        if decoded:
            found.append(("base64", decoded))
    for match in _HEX.finditer(text):
        decoded = _printable(bytes.fromhex(match.group()))
        if decoded:
            found.append(("hex", decoded))
    return found + _rot13(text)


def _rot13(text: str) -> list[tuple[str, str]]:
    lowered = text.lower()
    if any(word in lowered for words in _ROT13_NEEDS.values() for word in words):
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
                total += signal.weight
                hits.append(f"{encoding}:{signal.name}")
    return min(total, 1.0), hits


class InjectionRail:
    """Blocks content whose injection score reaches `threshold` (0..1)."""

    modifies = False

    def __init__(self, name: str, stage: Stage, threshold: float = 0.5) -> None:
        self.name, self.stage, self.threshold = name, stage, threshold
        self.signals = [*SIGNALS, EXFILTRATION] if stage == Stage.OUTPUT else SIGNALS

    async def check(self, content: str) -> Verdict:
        value, hits = score(content, self.signals)
        if value >= self.threshold:
            return Verdict.block(f"injection score {value:.2f} >= {self.threshold:.2f} ({', '.join(hits)})")
        return Verdict.allow()
