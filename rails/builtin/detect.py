"""Detectors for secrets and personal data, and the rail that blocks or masks what they find.

A detector is a name and a function from text to the spans it found; validators (Luhn for cards,
mod-97 for IBANs, entropy for opaque tokens) keep false positives down. Masking replaces each span
with `[NAME]`, right to left so offsets stay valid.

Every detector is made of regexes (`regexes_of`), so a rail can also run on a stream (`DetectRail.stream`): a
finding is resolved once no text to come can change it (rails/builtin/partial.py), and text is passed on up to
there, masked as the whole text would be. The shortcuts (`needs`, scanning near digits only) are exact: they
skip only text where the regex cannot match.
"""

from __future__ import annotations

import base64
import binascii
import functools
import ipaddress
import itertools
import math
import re
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Literal

from ..base import RailStream, Stage, Verdict
from .partial import Unsupported
from .scanner import Patterns, Scanner, patterns

Span = tuple[int, int]
Finder = Callable[[str], list[Span]]


_DIGIT_RUN = re.compile(r"\d+")


class _Regex:
    """A regex finder; `needs` lists substrings of which any match contains one (in lowercase with `fold`):
    text with none of them is skipped at the cost of a substring search (microseconds), not a regex scan."""

    def __init__(
        self,
        pattern: str,
        flags: int = 0,
        valid: Callable[[str], bool] | None = None,
        needs: Sequence[str] = (),
        fold: bool = False,
    ) -> None:
        self.pattern, self.valid, self.needs, self.fold = re.compile(pattern, flags), valid, tuple(needs), fold

    def __call__(self, text: str) -> list[Span]:
        if self.needs and not any(literal in (text.lower() if self.fold else text) for literal in self.needs):
            return []
        return [m.span() for m in self.pattern.finditer(text) if self.valid is None or self.valid(m.group())]


@functools.lru_cache(maxsize=8)
def _digit_windows(text: str, margin: int = 8) -> list[tuple[int, str]]:
    """(offset, segment) for the parts of `text` within `margin` characters of a digit, cut at
    whitespace so that word boundaries and look-behinds read the same as in the whole text."""
    windows: list[tuple[int, int]] = []
    for match in _DIGIT_RUN.finditer(text):
        start, end = max(0, match.start() - margin), min(len(text), match.end() + margin)
        if windows and start <= windows[-1][1] + 4 * margin:  # a short gap costs less than a call
            windows[-1] = (windows[-1][0], end)
        else:
            windows.append((start, end))
    cut: list[tuple[int, int]] = []
    for start, end in windows:
        start = max(text.rfind(" ", 0, start), text.rfind("\n", 0, start), -1) + 1
        stop = min((i for i in (text.find(" ", end), text.find("\n", end)) if i >= 0), default=len(text))
        if cut and start <= cut[-1][1]:  # cut back to the same whitespace: one segment, scanned once
            cut[-1] = (cut[-1][0], max(stop, cut[-1][1]))
        else:
            cut.append((start, stop))
    return [(start, text[start:stop]) for start, stop in cut]


class _NearDigits:
    """For detectors whose matches start within 3 characters of a digit and end within 8 characters after
    their last digit (cards, phones, IDs): scan only those parts of the text, cut at whitespace, which finds
    what a scan of the whole text finds."""

    def __init__(self, inner: _Regex) -> None:
        self.inner = inner

    def __call__(self, text: str) -> list[Span]:
        return [(s + offset, e + offset) for offset, segment in _digit_windows(text) for s, e in self.inner(segment)]


class _Led:
    """For a detector whose every match starts with `lead` (an IBAN: two capitals, two digits): its regex is
    tried only where `lead` occurs, in order, as a scan of the whole text would (a match's letter groups may
    run far past its digits, which scanning near digits would cut)."""

    def __init__(self, inner: _Regex, lead: str) -> None:
        self.inner, self.lead = inner, re.compile(f"(?={lead})")

    def __call__(self, text: str) -> list[Span]:
        spans, end, pattern, valid = [], 0, self.inner.pattern, self.inner.valid
        for candidate in self.lead.finditer(text):
            if candidate.start() >= end and (match := pattern.match(text, candidate.start())):
                end = match.end()
                if valid is None or valid(match.group()):
                    spans.append(match.span())
        return spans


class _Either:
    def __init__(self, *finders: Finder) -> None:
        self.finders = finders

    def __call__(self, text: str) -> list[Span]:
        return [span for find in self.finders for span in find(text)]


def regexes_of(finder: Finder) -> list[_Regex]:
    """The regexes a detector is made of, in the order it reports their spans; ValueError for a finder that
    is not made of them (it cannot run on a stream)."""
    if isinstance(finder, _Regex):
        return [finder]
    if isinstance(finder, (_NearDigits, _Led)):
        return [finder.inner]
    if isinstance(finder, _Either):
        return [regex for inner in finder.finders for regex in regexes_of(inner)]
    raise ValueError(f"{finder!r} is not made of regexes")


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


# issuer prefixes (IIN ranges) and lengths of the card schemes: Visa, Mastercard, Amex, Discover, JCB, Diners,
# UnionPay, Maestro; a Luhn-valid number outside them is an id (timestamps in ms, snowflake and order ids)
_SCHEMES = (
    (r"4", (13, 16, 19)),
    (r"5[1-5]|2(?:2[2-9]|[3-6]\d|7[01]|720)", (16,)),
    (r"3[47]", (15,)),
    (r"6(?:011|5|4[4-9])", (16, 17, 18, 19)),
    (r"35(?:2[89]|[3-8]\d)", (16, 17, 18, 19)),
    (r"3(?:0[0-5]|[689])", (14, 15, 16, 17, 18, 19)),
    (r"62", (16, 17, 18, 19)),
    (r"5[06-9]|6\d", tuple(range(12, 20))),
)
_SCHEME_RES = [(re.compile(prefix), lengths) for prefix, lengths in _SCHEMES]


def card_ok(candidate: str) -> bool:
    """A card number: Luhn-valid, of a scheme's issuer prefix and length."""
    if not luhn_ok(candidate):
        return False
    digits = "".join(str(int(c)) for c in candidate if c.isdigit())
    return any(len(digits) in lengths and prefix.match(digits) for prefix, lengths in _SCHEME_RES)


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


_JSON_ESCAPES = {"\\/": "/", "\\u002b": "+", "\\u002B": "+", "\\u002f": "/", "\\u002F": "/", "\\u003d": "=",
                 "\\u003D": "="}  # fmt: skip
_JSON_ESCAPE = re.compile(r"\\/|\\u00(?:2[bBfF]|3[dD])")
# a word (CamelCase too), a number, a hex id
_WORD = re.compile(r"(?:[A-Z]?[a-z]+)+|[A-Z]+|\d+|v\d+|[0-9a-f]{6,}|[0-9A-F]{6,}")
_SEPARATORS = re.compile(r"[/_\-+]+")
_ID_PREFIX = re.compile(r"([a-z]{2,10})[_\-][A-Za-z0-9]{8,}")  # an object id: cus_..., req_..., ch_...
_SECRET_PREFIXES = frozenset(
    "sk rk pk whsec key secret token api apikey pat glpat npm hf pass pwd auth access private priv session sess".split()
)


def _opaque(token: str) -> bool:
    """An opaque token: it mixes lower, upper and digits, with entropy over 4.2 bits, and encodes no data. JSON
    escapes of `/`, `+` and `=` are read as those characters; a URL path or slug of words and ids, an object id
    with a type prefix (`cus_...`, `req_...`), an alphabet, a documented placeholder (`...EXAMPLE...`) and a blob of
    over 256 characters are not credentials."""
    if "\\" in token:
        token = _JSON_ESCAPE.sub(lambda m: _JSON_ESCAPES[m.group()], token)
    if not 24 <= len(token) <= 256 or "EXAMPLE" in token:
        return False
    if sum(bool(re.search(p, token)) for p in ("[a-z]", "[A-Z]", "[0-9]")) < 3 or entropy(token) <= 4.2:
        return False
    return not (_named_id(token) or _path_like(token) or _sequential(token) or _encodes_data(token))


def _sequential(token: str) -> bool:
    """An alphabet or a keyboard run (`abcdef...`, `0123...`): half its neighbours are consecutive characters."""
    return 2 * sum(ord(b) - ord(a) == 1 for a, b in itertools.pairwise(token)) >= len(token)


def _named_id(token: str) -> bool:
    match = _ID_PREFIX.fullmatch(token)
    return match is not None and match.group(1) not in _SECRET_PREFIXES


def _path_like(token: str) -> bool:
    """Parts split by `/`, `-` or `_` (two or more with a `/`, three or more without), half of them words, numbers
    or hex ids of three characters or more: a URL path, a slug or an identifier, not a random key."""
    parts = [part for part in _SEPARATORS.split(token) if part]
    if len(parts) < (2 if "/" in token else 3):
        return False
    return 2 * sum(len(part) >= 3 and _WORD.fullmatch(part) is not None for part in parts) >= len(parts)


_MAGIC = (b"\x89PNG", b"\xff\xd8\xff", b"GIF8", b"%PDF", b"PK\x03\x04", b"\x1f\x8b", b"RIFF", b"<svg", b"<?xml")


def _encodes_data(token: str) -> bool:
    """Base64 of prose, of JSON / XML, or of a known file format is content, not a credential (base64 of
    a bare word like `user:password` still counts as one)."""
    try:
        altchars = b"-_" if "-" in token or "_" in token else None
        raw = base64.b64decode(token.rstrip("=") + "=" * (-len(token.rstrip("=")) % 4), altchars=altchars)
    except (binascii.Error, ValueError):
        return False
    if raw.startswith(_MAGIC):
        return True
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    readable = sum(c.isprintable() or c.isspace() for c in text) >= 0.95 * len(text)
    return readable and (any(c.isspace() for c in text) or text.lstrip()[:1] in ("{", "[", "<"))


def _user_colon_pass(match: str) -> bool:
    """HTTP Basic credentials: base64 of `user:password`."""
    token = match.split()[-1]
    try:
        return b":" in base64.b64decode(token + "=" * (-len(token) % 4), validate=True)
    except (binascii.Error, ValueError):
        return False


_KEY = r"A-Za-z0-9+/_\-"  # the characters of a key
_ESCAPED = r"\\(?:/|u00(?:2[bBfF]|3[dD]))"  # JSON escapes of / + =
SECRETS: dict[str, Finder] = {
    "PRIVATE_KEY": _Regex(r"-----BEGIN [A-Z ]*PRIVATE KEY-----[\s\S]*?(?:-----END [A-Z ]*PRIVATE KEY-----|$)"),
    "AWS_ACCESS_KEY": _Regex(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b", needs=("AKIA", "ASIA")),
    "GOOGLE_API_KEY": _Regex(r"\bAIza[0-9A-Za-z_\-]{35}\b", needs=("AIza",)),
    "GITHUB_TOKEN": _Regex(r"\bgh[pousr]_[A-Za-z0-9]{36,}\b", needs=("ghp_", "gho_", "ghu_", "ghs_", "ghr_")),
    "SLACK_TOKEN": _Regex(r"\bxox[abposr]-[A-Za-z0-9\-]{10,}\b", needs=("xox",)),
    "OPENAI_KEY": _Regex(r"\bsk-(?:proj-)?[A-Za-z0-9_\-]{20,}\b", needs=("sk-",)),
    "JWT": _Regex(r"\beyJ[A-Za-z0-9_\-]{8,}\.eyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}", needs=("eyJ",)),
    "BASIC_AUTH": _Regex(
        r"\b[Bb]asic\s+[A-Za-z0-9+/]{8,}={0,2}(?![A-Za-z0-9+/=])", valid=_user_colon_pass, needs=("asic",)
    ),
    "BEARER_TOKEN": _Regex(r"(?i)\bbearer\s+[A-Za-z0-9\-._~+/]{20,}=*", needs=("bearer",), fold=True),
    "PREFIXED_TOKEN": _Regex(  # service tokens with a known prefix: Stripe, GitLab, npm, Hugging Face, GitHub
        r"\b(?:(?:sk|rk)_(?:live|test)_[0-9A-Za-z]{10,}|whsec_[0-9A-Za-z]{20,}|glpat-[0-9A-Za-z_\-]{20,}"
        r"|npm_[0-9A-Za-z]{36}|hf_[0-9A-Za-z]{30,}|github_pat_[0-9A-Za-z_]{22,})\b",
        needs=("sk_", "rk_", "whsec_", "glpat-", "npm_", "hf_", "github_pat_"),
    ),
    "SLACK_WEBHOOK": _Regex(
        r"hooks\.slack\.com/services/T[A-Z0-9]{6,}/B[A-Z0-9]{6,}/[A-Za-z0-9]{20,}", needs=("hooks.slack.com",)
    ),
    # opaque tokens: 24+ characters of a key alphabet, mixing classes, with entropy over 4.2 bits; a token with JSON
    # escapes of / + = in it is read whole by its own regex (scanned only where there are such escapes)
    "HIGH_ENTROPY": _Either(
        _Regex(rf"(?<![{_KEY}])(?!(?<=\\)[/u])[{_KEY}]{{24,}}+(?!{_ESCAPED})={{0,2}}", valid=_opaque),
        _Regex(
            rf"(?<![{_KEY}\\])[{_KEY}]*+(?:{_ESCAPED}[{_KEY}]*+)++(?:=|\\u003[dD]){{0,2}}",
            valid=_opaque,
            needs=("\\/", "\\u00"),
        ),
    ),
}

_VERSION_BEFORE = (  # look-behinds of eight characters at most: the near-digit scan keeps that much before a digit
    r"(?<![vV.\d])(?<![vV] )(?<![=<>~!^@]=)(?<![<>~^@])(?<![<>~^] )(?<!(?i:version) )(?<!(?i:release) )(?<!(?i:ver) )"
    r"(?<!(?i:python) )(?<!(?i:build) )(?<!# )"
)
_VERSION_AFTER = r"(?!\.\d|[-+.]?(?i:rc|alpha|beta|dev|post|pre)\b)"
PII: dict[str, Finder] = {
    "EMAIL": _Regex(r"\b[A-Za-z0-9._%+\-]+@[A-Za-z0-9.\-]+\.[A-Za-z]{2,}\b", needs=("@",)),
    "CARD": _NearDigits(_Regex(r"\b(?:\d[ \-]?){11,18}\d\b", valid=card_ok)),
    "IBAN": _Led(
        _Regex(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?\b", valid=iban_ok), r"[A-Z]{2}\d{2}"
    ),
    "US_SSN": _NearDigits(_Regex(r"\b(?!000|666|9\d\d)\d{3}-(?!00)\d{2}-(?!0000)\d{4}\b", needs=("-",))),
    "UK_NINO": _NearDigits(_Regex(r"\b(?!BG|GB|NK|KN|TN|NT|ZZ)[A-CEGHJ-PR-TW-Z]{2} ?\d{2} ?\d{2} ?\d{2} ?[A-D]\b")),
    # international (+CC ...), (area) local, or North American 3-3-4; dates and versions do not match
    "PHONE": _NearDigits(
        _Regex(
            r"(?<![\w+])\+\d{1,3}(?:[ .\-]?\(?\d{1,4}\)?){2,5}(?!\w)"
            r"|(?<!\w)\(\d{2,4}\)[ .\-]?\d{3,4}[ .\-]?\d{3,4}(?!\w)"
            r"|(?<![\w.\-])\d{3}[.\-]\d{3}[.\-]\d{4}(?![\w.\-])",
        )
    ),
    # not a version: after `v`, "version ", `==` and the like, in a longer dotted run, before a pre-release suffix
    "IP_ADDRESS": _Either(
        _NearDigits(
            _Regex(
                _VERSION_BEFORE + r"\b(?:\d{1,3}\.){3}\d{1,3}\b" + _VERSION_AFTER,
                valid=ip_ok,
            )
        ),
        _Regex(r"\b(?:[0-9a-fA-F]{1,4}:){2,7}[0-9a-fA-F]{1,4}\b", valid=ip_ok, needs=(":",)),
    ),
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
        self.local = True  # check() is CPU work on the text: run inline, no timeout task
        try:
            self._regexes = [(name, regex) for name, finder in detectors.items() for regex in regexes_of(finder)]
        except ValueError:
            self._regexes = []  # a detector not made of regexes: no stream
        self._compiled: Patterns | None = None  # built on the first stream

    async def check(self, content: str) -> Verdict:
        findings = find_all(self.detectors, content)
        if not findings:
            return Verdict.allow()
        kinds = ", ".join(sorted({name for _, _, name in findings}))
        if self.action == "block":
            return Verdict.block(f"found {kinds}")
        return Verdict.modify(mask(content, findings), f"masked {kinds}")

    def stream(self) -> RailStream | None:
        if self._compiled is None and self._regexes:
            try:
                self._compiled = patterns(tuple((r.pattern.pattern, r.pattern.flags) for _, r in self._regexes))
            except Unsupported:
                self._regexes = []
        return None if self._compiled is None else _DetectStream(self, self._compiled)


class _DetectStream:
    """The rail on a text that arrives in pieces. A finding is resolved once decided, earliest and longest
    first as `find_all` does; text is passed on up to the frontier (or, when a finding it keeps runs across
    it, to that finding's end), masked: the pieces put together are the whole text masked at once."""

    def __init__(self, rail: DetectRail, patterns: Patterns) -> None:
        self.rail, self.kinds = rail, [(name, regex.valid) for name, regex in rail._regexes]
        self.scanner = Scanner(patterns)
        self.found: list[tuple[int, int, int, str]] = []  # decided, unresolved: (start, -end, order, name)
        self.emitted = self.kept_end = 0

    lead = "["  # what every mask it writes starts with

    @property
    def frontier(self) -> int:
        return self.scanner.frontier

    @property
    def pending(self) -> str:
        """The text it was given and has not passed on yet."""
        return self.scanner.slice(self.emitted, self.scanner.end)

    def peek(self, text: str) -> int | None:
        return None if self.found else self.scanner.peek(text)

    def feed(self, text: str, final: bool = False) -> tuple[str, Verdict]:
        scanner = self.scanner
        decided = scanner.feed(text, final)
        frontier = scanner.frontier
        if not decided and not self.found:  # the common case: nothing found, pass on up to the frontier
            emitted = self.emitted
            if frontier <= emitted:
                return "", _ALLOW
            self.emitted = frontier
            return scanner.slice(emitted, frontier), _ALLOW
        for index, start, end, group in decided:
            name, valid = self.kinds[index]
            if valid is None or valid(group):
                self.found.append((start, -end, index, name))
        if self.rail.action == "block":
            if self.found:
                return "", Verdict.block(f"found {', '.join(sorted({f[3] for f in self.found}))}")
            out, self.emitted = scanner.slice(self.emitted, frontier), frontier
            return out, _ALLOW
        self.found.sort()
        kept = []
        while self.found and self.found[0][0] < frontier:
            start, end, _, name = self.found.pop(0)
            if start >= self.kept_end:
                kept.append((start - self.emitted, -end - self.emitted, name))
                self.kept_end = -end
        cut = max(self.emitted, frontier, self.kept_end)
        out, self.emitted = mask(scanner.slice(self.emitted, cut), kept), cut
        if not kept:
            return out, _ALLOW
        return out, Verdict.modify(out, f"masked {', '.join(sorted({name for _, _, name in kept}))}")


_ALLOW = Verdict.allow()


def secrets_rail(name: str, stage: Stage, action: Literal["mask", "block"] = "block") -> DetectRail:
    return DetectRail(name, stage, SECRETS, action)


def pii_rail(
    name: str, stage: Stage, action: Literal["mask", "block"] = "mask", kinds: Sequence[str] = ()
) -> DetectRail:
    chosen = {k: v for k, v in PII.items() if not kinds or k in kinds}
    return DetectRail(name, stage, chosen, action)
