"""Detectors for secrets and personal data, and the rail that blocks or masks what they find.

A detector is a name and a function from text to the spans it found; validators (Luhn for cards,
mod-97 for IBANs, entropy for opaque tokens) keep false positives down. Masking replaces each span
with `[NAME]`, right to left so offsets stay valid.
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Literal

from ..base import Stage, Verdict

Span = tuple[int, int]
Finder = Callable[[str], list[Span]]


def _regex(pattern: str, flags: int = 0, valid: Callable[[str], bool] | None = None) -> Finder:
    compiled = re.compile(pattern, flags)

    def find(text: str) -> list[Span]:
        return [m.span() for m in compiled.finditer(text) if valid is None or valid(m.group())]

    return find


def luhn_ok(candidate: str) -> bool:
    digits = [int(c) for c in candidate if c.isdigit()]
    if not 13 <= len(digits) <= 19:
        return False
    total = 0
    for index, digit in enumerate(reversed(digits)):
        if index % 2:
            digit = digit * 2 - 9 if digit > 4 else digit * 2
        total += digit
    return total % 10 == 0


def iban_ok(candidate: str) -> bool:
    compact = candidate.replace(" ", "").upper()
    if not 15 <= len(compact) <= 34:
        return False
    rearranged = compact[4:] + compact[:4]
    return int("".join(str(int(c, 36)) for c in rearranged)) % 97 == 1


def ip_ok(candidate: str) -> bool:
    try:
        ipaddress.ip_address(candidate)
    except ValueError:
        return False
    return True


def entropy(token: str) -> float:
    counts = Counter(token)
    return -sum(n / len(token) * math.log2(n / len(token)) for n in counts.values())


def _high_entropy(text: str) -> list[Span]:
    """Opaque tokens: 24+ characters of a key alphabet, mixing classes, with entropy over 4.2 bits."""
    spans = []
    for match in re.finditer(r"(?<![A-Za-z0-9+/_\-])[A-Za-z0-9+/_\-]{24,}={0,2}", text):
        token = match.group()
        classes = sum(bool(re.search(p, token)) for p in ("[a-z]", "[A-Z]", "[0-9]"))
        if classes == 3 and entropy(token) > 4.2:
            spans.append(match.span())
    return spans


SECRETS: dict[str, Finder] = {
    "PRIVATE_KEY": _regex(r"-----BEGIN [A-Z ]*PRIVATE KEY-----[\s\S]*?(?:-----END [A-Z ]*PRIVATE KEY-----|$)"),
    "AWS_ACCESS_KEY": _regex(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"),
    "GOOGLE_API_KEY": _regex(r"\bAIza[0-9A-Za-z_\-]{35}\b"),
    "GITHUB_TOKEN": _regex(r"\bgh[pousr]_[A-Za-z0-9]{36,}\b"),
    "SLACK_TOKEN": _regex(r"\bxox[abposr]-[A-Za-z0-9\-]{10,}\b"),
    "OPENAI_KEY": _regex(r"\bsk-(?:proj-)?[A-Za-z0-9_\-]{20,}\b"),
    "JWT": _regex(r"\beyJ[A-Za-z0-9_\-]{8,}\.eyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}"),
    "BEARER_TOKEN": _regex(r"(?i)\bbearer\s+[A-Za-z0-9\-._~+/]{20,}=*"),
    "HIGH_ENTROPY": _high_entropy,
}

PII: dict[str, Finder] = {
    "EMAIL": _regex(r"\b[A-Za-z0-9._%+\-]+@[A-Za-z0-9.\-]+\.[A-Za-z]{2,}\b"),
    "CARD": _regex(r"\b(?:\d[ \-]?){12,18}\d\b", valid=luhn_ok),
    "IBAN": _regex(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?\b", valid=iban_ok),
    "US_SSN": _regex(r"\b(?!000|666|9\d\d)\d{3}-(?!00)\d{2}-(?!0000)\d{4}\b"),
    "UK_NINO": _regex(r"\b(?!BG|GB|NK|KN|TN|NT|ZZ)[A-CEGHJ-PR-TW-Z]{2} ?\d{2} ?\d{2} ?\d{2} ?[A-D]\b"),
    # international (+CC ...), (area) local, or North American 3-3-4; dates and versions do not match
    "PHONE": _regex(
        r"(?<![\w+])\+\d{1,3}(?:[ .\-]?\(?\d{1,4}\)?){2,5}(?!\w)"
        r"|(?<!\w)\(\d{2,4}\)[ .\-]?\d{3,4}[ .\-]?\d{3,4}(?!\w)"
        r"|(?<![\w.\-])\d{3}[.\-]\d{3}[.\-]\d{4}(?![\w.\-])"
    ),
    "IP_ADDRESS": _regex(r"\b(?:\d{1,3}\.){3}\d{1,3}\b|\b(?:[0-9a-fA-F]{1,4}:){2,7}[0-9a-fA-F]{1,4}\b", valid=ip_ok),
}


def find_all(detectors: dict[str, Finder], text: str) -> list[tuple[int, int, str]]:
    """Non-overlapping findings, earliest and longest first."""
    found = sorted(((s, e, n) for n, find in detectors.items() for s, e in find(text)), key=lambda f: (f[0], -f[1]))
    kept: list[tuple[int, int, str]] = []
    for start, end, name in found:
        if not kept or start >= kept[-1][1]:
            kept.append((start, end, name))
    return kept


def mask(text: str, findings: Sequence[tuple[int, int, str]]) -> str:
    for start, end, name in reversed(findings):
        text = f"{text[:start]}[{name}]{text[end:]}"
    return text


class DetectRail:
    """Finds secrets or personal data; `mask` replaces them, `block` refuses the content."""

    def __init__(
        self, name: str, stage: Stage, detectors: dict[str, Finder], action: Literal["mask", "block"] = "mask"
    ) -> None:
        self.name, self.stage, self.action = name, stage, action
        self.detectors = detectors
        self.modifies = action == "mask"

    async def check(self, content: str) -> Verdict:
        findings = find_all(self.detectors, content)
        if not findings:
            return Verdict.allow()
        kinds = ", ".join(sorted({name for _, _, name in findings}))
        if self.action == "block":
            return Verdict.block(f"found {kinds}")
        return Verdict.modify(mask(content, findings), f"masked {kinds}")


def secrets_rail(name: str, stage: Stage, action: Literal["mask", "block"] = "block") -> DetectRail:
    return DetectRail(name, stage, SECRETS, action)


def pii_rail(
    name: str, stage: Stage, action: Literal["mask", "block"] = "mask", kinds: Sequence[str] = ()
) -> DetectRail:
    chosen = {k: v for k, v in PII.items() if not kinds or k in kinds}
    return DetectRail(name, stage, chosen, action)
