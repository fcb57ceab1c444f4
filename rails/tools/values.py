"""Values as provenance sees them: normal forms (words, URLs, e-mail addresses, IBANs, phone numbers,
dates), the index keys a value is looked up by, and the sink values inside free text."""

from __future__ import annotations

import calendar
import functools
import re
import unicodedata
from collections.abc import Iterable, Iterator
from typing import Any

MAX_PHRASE = 6  # a value of up to this many words may match a phrase inside a text
MAX_WHOLE = 512  # characters: a longer text or field is not indexed as a whole value
_EDGE = "\"'`.,;:!?()[]{}<>*_~|$€£«»\u201c\u201d\u2018\u2019"
_WORD = re.compile(r"\S+")
_LEADING_ZERO = re.compile(r"^[+-]?0\d")  # "0044", "007": an identifier, not a number
_NUMBER = re.compile(r"^[+-]?\d{1,3}(?:,\d{3})+(?:\.\d+)?$|^[+-]?\d+(?:\.\d+)?$")

_EMAIL = re.compile(r"(?<![\w.+-])[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")
_TLDS = "com|org|net|io|dev|ai|co|edu|gov|info|biz|app|xyz|me|uk|de|fr|eu|us|ch|nl|it|es|ru|cn|jp|in|ly|sh|to"
_URL = re.compile(
    r"(?<![@\w.-])(?:(?:https?|ftp)://[^\s<>\"'`)\]]+"
    rf"|(?:www\.)?[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9-]+)*\.(?:{_TLDS})\b(?![@.\w-]*@)"
    r"(?::\d+)?(?:/[^\s<>\"'`)\]]*)?)",
    re.IGNORECASE,
)
_IBAN = re.compile(r"\b[A-Z]{2}\d{2}(?:[ \t]?\n?[ \t]?[A-Z0-9]){11,30}\b")
_PHONE = re.compile(r"(?<![\w+])\+?\d[\d ().-]{6,}\d(?!\w)")
_MONTHS = {name.lower(): i for i, name in enumerate(calendar.month_name) if name} | {
    name.lower(): i for i, name in enumerate(calendar.month_abbr) if name
}
_MONTH = "|".join(sorted(_MONTHS, key=len, reverse=True))
_MONTH_PREFIXES = tuple(name.lower() for name in calendar.month_abbr if name)  # every month name starts so
_DATE_ISO = re.compile(r"\b(\d{4})-(\d{1,2})-(\d{1,2})\b")
_DATE_MDY = re.compile(rf"\b({_MONTH})\.?\s+(\d{{1,2}})(?:st|nd|rd|th)?,?\s+(\d{{4}})\b", re.IGNORECASE)
_DATE_DMY = re.compile(rf"\b(\d{{1,2}})(?:st|nd|rd|th)?\s+(?:of\s+)?({_MONTH})\.?,?\s+(\d{{4}})\b", re.IGNORECASE)
SINK_KINDS = ("url", "email", "iban", "tel")
_DIGIT = re.compile(r"\d")
_YEAR = re.compile(r"\d{4}")  # every date form has one
_SCHEME = re.compile(r"^[a-z][a-z0-9+.-]*://", re.IGNORECASE)
_NO_DIGITS = str.maketrans("", "", "0123456789")


def words(text: str) -> list[str]:
    """Casefolded NFKC words with edge punctuation removed; numbers lose thousands separators."""
    text = unicodedata.normalize("NFKC", text).casefold()
    out = []
    for raw in _WORD.findall(text):
        word = raw.strip(_EDGE)
        if word:
            out.append(_number(word) if _NUMBER.match(word) and not _LEADING_ZERO.match(word) else word)
    return out


def _number(word: str) -> str:
    value = float(word.replace(",", ""))
    return str(int(value)) if value.is_integer() and abs(value) < 1e18 else repr(value)


def _url_form(url: str) -> str:
    url = url.rstrip(".,;:!?'\"")
    url = _SCHEME.sub("", url)
    host, sep, rest = url.partition("/")
    host = host.lower().removeprefix("www.")
    return (host + sep + rest).rstrip("/")


def entities(text: str) -> tuple[tuple[str, str, str], ...]:
    """(kind, normal form, text as written) of each sink value and date in `text`."""
    if len(text) > 256:
        return tuple(_scan(text))
    return _short_entities(text)


@functools.lru_cache(maxsize=8192)  # argument values are scanned by several rules and by the key lookup
def _short_entities(text: str) -> tuple[tuple[str, str, str], ...]:
    return tuple(_scan(text))


def _scan(text: str) -> Iterator[tuple[str, str, str]]:
    # Each kind is searched only where it can be (a dot, an @, enough digits): most values hold none.
    digits = len(text) - len(text.translate(_NO_DIGITS))
    if "." not in text and not digits:
        return  # no URL, address, IBAN, phone number or date can be in it
    emails = list(_EMAIL.finditer(text)) if "@" in text else []
    for found in emails:
        yield "email", found.group(0).lower(), found.group(0)
    if "." in text:
        for found in _URL.finditer(text):
            if any(e.start() <= found.start() < e.end() for e in emails):
                continue
            yield "url", _url_form(found.group(0)), found.group(0).rstrip(".,;:!?'\"")
    if digits >= 2:
        for found in _IBAN.finditer(text):
            yield "iban", re.sub(r"\s", "", found.group(0)), found.group(0)
    if digits >= 8:
        for found in _PHONE.finditer(text):
            number = re.sub(r"\D", "", found.group(0))
            clock = text.startswith(":", found.end()) and text[found.end() + 1 : found.end() + 2].isdigit()
            if 8 <= len(number) <= 15 and not _DATE_ISO.search(found.group(0)) and not clock:
                yield "tel", number, found.group(0)  # not a date, nor a date and an hour ("2024-05-18 08:00")
    if digits >= 4 and _YEAR.search(text):
        for iso in _dates(text):
            yield "date", iso, iso


def _dates(text: str) -> Iterator[str]:
    if "-" in text:
        for year, month, day in _DATE_ISO.findall(text):
            yield _iso(int(year), int(month), int(day))
    lowered = text.lower()
    if not any(prefix in lowered for prefix in _MONTH_PREFIXES):
        return  # no month name: the two written forms cannot match (most 4-digit runs are not years)
    for month, day, year in _DATE_MDY.findall(text):
        yield _iso(int(year), _MONTHS[month.lower()], int(day))
    for day, month, year in _DATE_DMY.findall(text):
        yield _iso(int(year), _MONTHS[month.lower()], int(day))


def _iso(year: int, month: int, day: int) -> str:
    return f"{year:04d}-{month:02d}-{day:02d}"


def value_keys(value: Any) -> list[str]:
    """The index keys a scalar argument value is looked up by."""
    if isinstance(value, bool) or value is None:
        return []
    if isinstance(value, int | float):
        return [f"v:{_number(repr(value))}"] if abs(value) < 1e18 else []
    if not isinstance(value, str):
        return []
    return list(_string_keys(value))


@functools.lru_cache(maxsize=4096)  # rules ask about the same argument values again and again
def _string_keys(value: str) -> tuple[str, ...]:
    keys = []
    normal = words(value)
    if normal and (len(normal) <= MAX_PHRASE or len(value) <= MAX_WHOLE):
        keys.append("v:" + " ".join(normal))
    stripped = value.strip()
    for kind, form, written in entities(stripped):
        if written.strip() == stripped or kind == "date":
            keys.append(f"{kind}:{form}")
    return tuple(keys)


def sinks(value: Any) -> list[str]:
    """The URLs, e-mail addresses, IBANs and phone numbers in a value's text leaves, as written."""
    found: list[str] = []
    for leaf in leaves(value):
        if isinstance(leaf, str):
            found.extend(_string_sinks(leaf))
    return found


@functools.lru_cache(maxsize=4096)
def _string_sinks(text: str) -> tuple[str, ...]:
    return tuple(written for kind, _, written in entities(text) if kind in SINK_KINDS)


def leaves(value: Any) -> Iterator[Any]:
    if isinstance(value, dict):
        for item in value.values():
            yield from leaves(item)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from leaves(item)
    else:
        yield value


def lookup_keys(args: Any, words_asked: Iterable[str] = ()) -> set[str]:
    """Every key a decision on these arguments may read: each leaf, each sink inside a leaf, the words
    rules ask `user_mentions` about. Fetched from the session's index in one read before deciding."""
    keys: set[str] = set()
    for leaf in leaves(args):
        if isinstance(leaf, str):
            keys.update(_leaf_keys(leaf))
        else:
            keys.update(value_keys(leaf))
    for word in words_asked:
        keys.update(value_keys(word))
    return keys


@functools.lru_cache(maxsize=4096)
def _leaf_keys(text: str) -> tuple[str, ...]:
    """A text leaf's keys and those of each sink value inside it. A sink's keys are its own normal form,
    found by the leaf's scan, and its words: scanning the sink's text again finds nothing more that a
    lookup uses (a date inside a URL is a date of the leaf too)."""
    keys = list(_string_keys(text))
    for kind, form, written in entities(text):
        if kind in SINK_KINDS:
            keys.append(f"{kind}:{form}")
            normal = words(written)
            if normal and (len(normal) <= MAX_PHRASE or len(written) <= MAX_WHOLE):
                keys.append("v:" + " ".join(normal))
    return tuple(keys)
