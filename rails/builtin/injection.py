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

from ..base import Stage, Verdict

_I = re.IGNORECASE | re.DOTALL
SIGNALS: list[tuple[str, float, re.Pattern[str]]] = [
    ("instruction_override", 0.6, re.compile(  # within one clause: "ignore all previous instructions"
        r"\b(ignore|disregard|forget|override|bypass)\b[^.;:!?\n]{0,40}?\b(previous|prior|above|earlier|all|any|your"
        r"|system)\b(\s+\w+)?\s+(instructions?|rules|prompts?|directions|guidelines|messages?)\b", _I)),
    ("new_instructions", 0.4, re.compile(
        r"\b(new|updated|real|actual) (instructions|task|rules)\s*:|\bfrom now on,? you\b|\byou are now\b", _I)),
    ("jailbreak_persona", 0.5, re.compile(
        r"\b(DAN|do anything now|developer mode|jailbreak|jailbroken|unfiltered|no (restrictions|limits|filters)"
        r"|without (any )?(restrictions|filters|limitations|censorship)|evil (confidant|assistant))\b", _I)),
    ("role_play", 0.3, re.compile(
        r"\b(pretend (to be|you are)|act as|roleplay as|role-play as|stay in character)\b", _I)),
    ("prompt_extraction", 0.5, re.compile(
        r"\b(reveal|print|show|repeat|leak|output|tell me)\b.{0,30}?\b(system prompt|hidden (prompt|instructions)"
        r"|initial instructions|your instructions)\b", _I)),
    ("fake_role_marker", 0.4, re.compile(
        r"<\|im_start\|>|<\|system\|>|\[/?(system|INST)\]|^\s*#{2,}\s*(system|instruction)s?\b"
        r"|^\s*system\s*:", _I | re.M)),
    ("hidden_unicode", 0.5, re.compile(
        "[\u200b-\u200f\u202a-\u202e\u2060-\u2064\u2066-\u2069\ufeff\U000e0000-\U000e007f]")),
]  # fmt: skip
EXFILTRATION = ("markdown_exfiltration", 0.7, re.compile(r"!\[[^\]]*\]\(\s*https?://[^)\s]*[?#][^)\s]*=[^)\s]+\)", _I))
_BASE64 = re.compile(r"(?<![A-Za-z0-9+/])[A-Za-z0-9+/]{20,}={0,2}(?![A-Za-z0-9+/=])")
_HEX = re.compile(r"\b(?:[0-9a-fA-F]{2}){12,}\b")


def _printable(raw: bytes) -> str | None:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return text if sum(c.isprintable() or c.isspace() for c in text) >= 0.9 * len(text) else None


def hidden_payloads(text: str) -> list[tuple[str, str]]:
    """(encoding, decoded text) for every base64 / hex run that decodes to readable text, and rot13."""
    found: list[tuple[str, str]] = []
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
    found.append(("rot13", codecs.decode(text, "rot13")))
    return found


def score(text: str, signals: list[tuple[str, float, re.Pattern[str]]]) -> tuple[float, list[str]]:
    """(score capped at 1.0, names of the signals hit); decoded payloads add what they hid."""
    total, hits = 0.0, []
    for name, weight, pattern in signals:
        if pattern.search(text):
            total += weight
            hits.append(name)
    for encoding, decoded in hidden_payloads(text):
        for name, weight, pattern in signals:
            if name not in hits and pattern.search(decoded):
                total += weight
                hits.append(f"{encoding}:{name}")
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
