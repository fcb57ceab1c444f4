"""Values as provenance sees them: normal forms (words, URLs, e-mail addresses, IBANs, phone numbers,
dates), the index keys a value is looked up by, and the sink values inside free text."""

from __future__ import annotations

import calendar
import functools
import re
import unicodedata
from collections.abc import Iterable
from typing import Any

MAX_PHRASE = 6  # a value of up to this many words may match a phrase inside a text
MAX_WHOLE = 512  # characters: a longer text or field is not indexed as a whole value
_EDGE = "\"'`.,;:!?()[]{}<>*_~|$€£«»\u201c\u201d\u2018\u2019"
_WORD = re.compile(r"\S+")
_LEADING_ZERO = re.compile(r"^[+-]?0\d")  # "0044", "007": an identifier, not a number
_NUMBER_START = frozenset("+-0123456789")  # what a match of _NUMBER starts with
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
# the letters IGNORECASE matches to an ASCII one (I with a dot, dotless i, long s, Kelvin sign): "apr\u0131l"
_ASCII_FOLD = str.maketrans("\u0130\u0131\u017f\u212a", "iisk")
_MONTH_PREFIX = re.compile("|".join(name.lower() for name in calendar.month_abbr if name))  # every month name starts so
_DATE_ISO = re.compile(r"\b(\d{4})-(\d{1,2})-(\d{1,2})\b")
_DATE_MDY = re.compile(rf"\b({_MONTH})\.?\s+(\d{{1,2}})(?:st|nd|rd|th)?,?\s+(\d{{4}})\b", re.IGNORECASE)
_DATE_DMY = re.compile(rf"\b(\d{{1,2}})(?:st|nd|rd|th)?\s+(?:of\s+)?({_MONTH})\.?,?\s+(\d{{4}})\b", re.IGNORECASE)
SINK_KINDS = ("url", "email", "iban", "tel")
_DIGIT = re.compile(r"\d")
_YEAR = re.compile(r"\d{4}")  # every date form has one
_SPACE = re.compile(r"\s")
_SCHEME = re.compile(r"^[a-z][a-z0-9+.-]*://", re.IGNORECASE)


def words(text: str) -> list[str]:
    """Casefolded NFKC words with edge punctuation removed; numbers lose thousands separators."""
    text = text.lower() if text.isascii() else unicodedata.normalize("NFKC", text).casefold()  # NFKC: ASCII as is
    out = []
    for raw in _WORD.findall(text):
        word = raw.strip(_EDGE)
        if word:
            numeric = word[0] in _NUMBER_START and _NUMBER.match(word) and not _LEADING_ZERO.match(word)
            out.append(_number(word) if numeric else word)
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
        return _scan(text)
    return _short_entities(text)


@functools.lru_cache(maxsize=8192)  # a tool result repeats values (senders, subjects) from step to step
def _short_entities(text: str) -> tuple[tuple[str, str, str], ...]:
    return _scan(text)


def _scan(text: str) -> tuple[tuple[str, str, str], ...]:
    # Each kind is searched only where it can be (a dot, an @, an upper-case letter, enough digits): most
    # values hold none.
    digits = _digits(text)
    if "." not in text and not digits:
        return ()  # no URL, address, IBAN, phone number or date can be in it
    found: list[tuple[str, str, str]] = []
    emails = list(_EMAIL.finditer(text)) if "@" in text else []
    for email in emails:
        found.append(("email", email.group(0).lower(), email.group(0)))
    # A URL is not taken where an address starts it; none can start outside an address that is the whole text.
    if "." in text and not (emails and emails[0].span() == (0, len(text))):
        for url in _URL.finditer(text):
            if any(e.start() <= url.start() < e.end() for e in emails):
                continue
            found.append(("url", _url_form(url.group(0)), url.group(0).rstrip(".,;:!?'\"")))
    if digits >= 2 and not text.islower():  # an IBAN starts with two upper-case letters
        for iban in _IBAN.finditer(text):
            found.append(("iban", re.sub(r"\s", "", iban.group(0)), iban.group(0)))
    if digits >= 8:
        for phone in _PHONE.finditer(text):
            number = re.sub(r"\D", "", phone.group(0))
            clock = text.startswith(":", phone.end()) and text[phone.end() + 1 : phone.end() + 2].isdigit()
            if 8 <= len(number) <= 15 and not _DATE_ISO.search(phone.group(0)) and not clock:
                found.append(("tel", number, phone.group(0)))  # not a date, nor a date and an hour ("2024-05-18 08:00")
    if digits >= 4 and ("-" in text or _SPACE.search(text)) and _YEAR.search(text):  # ISO has "-", words spaces
        found.extend(("date", iso, iso) for iso in _dates(text))
    return tuple(found)


def _digits(text: str) -> int:
    raw = text.encode("utf-8", "surrogatepass")  # an ASCII digit is one byte of its own in UTF-8
    return len(raw) - len(raw.translate(None, b"0123456789"))


def _dates(text: str) -> list[str]:
    found = [_iso(int(y), int(m), int(d)) for y, m, d in _DATE_ISO.findall(text)] if "-" in text else []
    if not _MONTH_PREFIX.search(text.lower()):
        return found  # no month name: the two written forms cannot match (most 4-digit runs are not years)
    found += [_iso(int(year), _month(month), int(day)) for month, day, year in _DATE_MDY.findall(text)]
    found += [_iso(int(year), _month(month), int(day)) for day, month, year in _DATE_DMY.findall(text)]
    return found


def _month(name: str) -> int:
    return _MONTHS[name.translate(_ASCII_FOLD).lower()]


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
    known = _SINK_KEYS.get(value)
    return list(known if known is not None else _text(value)[0])


def sinks(value: Any) -> list[str]:
    """The URLs, e-mail addresses, IBANs and phone numbers in a value's text leaves, as written, each once
    (a rule asks the same of each: a repeated one would only cost its question again)."""
    found: dict[str, None] = {}
    for leaf in leaves(value):
        if isinstance(leaf, str):
            found.update(dict.fromkeys(_text(leaf)[2]))
    return list(found)


@functools.lru_cache(maxsize=8192)  # the key lookup, then the rules, ask about the same argument values
def _text(value: str) -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
    """A text value's keys; those and the keys of each sink inside it (what a lookup reads for a leaf);
    its sinks as written. A sink's keys are its own normal form, found by the value's scan, and its words:
    scanning the sink's text again finds nothing more that a lookup uses (a date inside a URL is a date of
    the value too)."""
    normal = words(value)
    keys = ["v:" + " ".join(normal)] if normal and (len(normal) <= MAX_PHRASE or len(value) <= MAX_WHOLE) else []
    stripped = value.strip()
    found = _scan(stripped)  # not through `entities`' cache: this one holds the result
    if not found and stripped == value:  # most values: no URL, address, IBAN, phone number or date
        return (only := tuple(keys)), only, ()
    for kind, form, written in found:
        if written.strip() == stripped or kind == "date":
            keys.append(f"{kind}:{form}")
    leaf, written_sinks = list(keys), []
    scanned = found if stripped == value else _scan(value)
    for kind, form, written in scanned:
        if kind in SINK_KINDS:
            written_sinks.append(written)
            leaf.append(f"{kind}:{form}")
            if written == value:
                continue  # the value is this sink: its words are the value's, keyed above
            sink_words = words(written)
            short = sink_words and (len(sink_words) <= MAX_PHRASE or len(written) <= MAX_WHOLE)
            own = ["v:" + " ".join(sink_words)] if short else []
            leaf += own
            if written in _SINK_KEYS:
                continue
            dated = any(kind == "date" for kind, _, _ in scanned)
            if (whole := _whole(kind, form, written, dated)) is not None:
                if len(_SINK_KEYS) >= 8192:
                    _SINK_KEYS.clear()
                _SINK_KEYS[written] = (*own, *whole)  # what `_text(written)[0]` is, without scanning it again
    return tuple(keys), tuple(leaf), tuple(written_sinks)


_SINK_KEYS: dict[str, tuple[str, ...]] = {}  # a URL's or address's own keys, from the scan of the text holding it


def _whole(kind: str, form: str, text: str, dated: bool) -> tuple[str, ...] | None:
    """The keys after its words' that `text`'s own scan gives, when it is one URL or e-mail address found in
    a longer text with normal form `form` (`dated`: that text holds a date): the search of its kind takes all
    of it (no other kind can: an IBAN or a phone number holds no "@", "." or "://", and a URL is not taken
    where an address starts), with the same form (of the same characters), then its dates (a date in it is
    one of the longer text's: the characters around a URL or an address end a word). None where only a scan
    of `text` can tell (a URL holding "@", an IBAN, a phone number)."""
    if kind == "email":
        found = _EMAIL.match(text)
    elif kind == "url" and "@" not in text and "." in text:
        found = _URL.match(text)
    else:
        return None
    if found is None or found.group(0).rstrip(".,;:!?'\"") != text:
        return None
    if dated and _digits(text) >= 4 and _YEAR.search(text):
        return (f"{kind}:{form}", *(f"date:{iso}" for iso in _dates(text)))
    return (f"{kind}:{form}",)


def leaves(value: Any) -> list[Any]:
    """The scalars of a value, depth first in order (a scalar is its own one leaf)."""
    if not isinstance(value, dict | list | tuple):
        return [value]
    found: list[Any] = []
    _collect(value, found)
    return found


def _collect(value: dict[Any, Any] | list[Any] | tuple[Any, ...], found: list[Any]) -> None:
    for item in value.values() if isinstance(value, dict) else value:
        if isinstance(item, dict | list | tuple):
            _collect(item, found)
        else:
            found.append(item)


def lookup_keys(args: Any, words_asked: Iterable[str] = ()) -> set[str]:
    """Every key a decision on these arguments may read: each leaf, each sink inside a leaf, the words
    rules ask `user_mentions` about. Fetched from the session's index in one read before deciding."""
    keys: set[str] = set()
    for leaf in leaves(args):
        if isinstance(leaf, str):
            keys.update(_text(leaf)[1])
        else:
            keys.update(value_keys(leaf))
    for word in words_asked:
        keys.update(value_keys(word))
    return keys
