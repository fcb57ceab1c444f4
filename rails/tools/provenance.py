"""Argument provenance: where each value of a proposed tool call entered the session.

Every text that enters a session is indexed once, when it arrives: the user's, system and developer
messages, each field of a structured tool result (JSON or YAML: one origin per leaf and mapping key,
with its path), an unstructured tool result, and the assistant's own text. Two structures:

  keys -> origins   v:<words>  a tool-result field or plain result as a whole, and every phrase of up to
                               `MAX_PHRASE` words of a short one (casefolded, NFKC, whitespace collapsed,
                               edge punctuation off)
                    url:/email:/iban:/tel:/date:<normal form>  the sink values found anywhere in any text
                               (a URL in an e-mail body, an IBAN in groups or wrapped onto two lines, a
                               date written in words), in one normal form each
  texts             the prompts, and documents the user pointed at, kept whole and normalized: a phrase
                    is searched for in the texts holding its rarest word (what people type is small; a
                    key per phrase cost ~100 writes per 20-word message)

A value is looked up by the same keys (dict reads, no scan of the tool output). A value of more than
`MAX_PHRASE` words matches only a whole text or field, never a substring: a long argument is not "from
the user" because each of its words is. A value that appears nowhere has no origin (the model made it
up, or computed it: dates, sums).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import msgspec
import yaml

from .values import MAX_PHRASE, MAX_WHOLE, entities, leaves, value_keys, words

PROMPT = frozenset({"user", "system", "developer"})
MAX_FIELD_PHRASES = MAX_PHRASE  # a tool-result field (or plain result) this short is indexed by its phrases too
ORIGINS_PER_KEY = 8  # beyond this a key takes only prompt origins (those make a value trusted): bounded size
MAX_TEXT_CHARS = 16_000  # a prompt's (or pointed document's) words searched by phrase, at most (entities: all)
MAX_STRUCTURED = 1 << 20  # characters: a longer tool result is indexed as plain text


class Origin(msgspec.Struct, array_like=True, frozen=True):
    """One place a value appeared. Encoded as a compact JSON array (the session index stores these)."""

    source: str  # user | system | developer | tool | assistant
    tool: str = ""  # the tool whose result held it
    step: int = 0  # the session step it arrived in
    field: str = ""  # JSON path of the field in a structured tool result ("$.items[2].subject"); "" for plain text
    labels: tuple[str, ...] = ()  # the labels of that text or field (tool, field and rail labels)
    pointed: bool = False  # a result of a call whose arguments came from the user's messages

    def as_cel(self) -> dict[str, Any]:
        return {"source": self.source, "tool": self.tool, "step": self.step, "field": self.field,
                "labels": list(self.labels), "pointed": self.pointed}  # fmt: skip


_origin_encoder = msgspec.json.Encoder()
_origin_decoder = msgspec.json.Decoder(Origin)


def encode_origin(origin: Origin) -> str:
    return _origin_encoder.encode(origin).decode()


def decode_origins(raw: bytes | str) -> list[Origin]:
    """Origins stored one JSON array a line; a line that does not decode is skipped (never trusted)."""
    text = raw.decode() if isinstance(raw, bytes) else raw
    origins = []
    for line in text.split("\n"):
        try:
            origins.append(_origin_decoder.decode(line))
        except msgspec.DecodeError:
            continue
    return origins


def encode_text(origin: Origin, text: str) -> str:
    """A text searched by phrase, stored as one line: its origin, a tab, its normalized words."""
    return encode_origin(origin) + "\t" + text


def decode_text(raw: bytes | str) -> tuple[Origin, str] | None:
    line = raw.decode() if isinstance(raw, bytes) else raw
    head, _, text = line.partition("\t")
    try:
        return _origin_decoder.decode(head), text
    except msgspec.DecodeError:
        return None


# --- indexing -------------------------------------------------------------------------------------------

FieldLabels = Callable[[str], tuple[str, ...]]  # field path -> its labels


class Texts:
    """Texts whose phrases are found by searching them rather than by keys: the prompts (user, system,
    developer messages) and documents the user pointed at. Each is kept once, normalized, with its origin;
    a phrase is looked up in the texts that hold its rarest word (people type little: writing every phrase
    of a 20-word message as a key cost ~100 writes a step; the word -> texts map is built once a step, when
    a phrase is first looked up)."""

    def __init__(self, lines: list[tuple[Origin, str]] | None = None) -> None:
        self.lines: list[tuple[Origin, str]] = lines or []  # (origin, " w1 w2 ... ")
        self._holding: dict[str, list[int]] | None = None  # word -> the lines holding it, in order

    def add(self, origin: Origin, normal: list[str]) -> None:
        self.lines.append((origin, " " + " ".join(normal)[:MAX_TEXT_CHARS] + " "))
        self._holding = None

    def _build(self) -> dict[str, list[int]]:
        holding: dict[str, list[int]] = {}
        for number, (_, text) in enumerate(self.lines):
            for word in set(text.split()):
                holding.setdefault(word, []).append(number)
        self._holding = holding
        return holding

    def find(self, phrase: str, whole: bool) -> list[Origin]:
        """Origins of the texts holding `phrase` as whole words (`whole`: as the entire text)."""
        if not self.lines:
            return []
        holding = self._holding if self._holding is not None else self._build()
        candidates: list[int] | None = None  # the lines holding its rarest word (most values are in no prompt)
        for word in phrase.split(" "):
            lines = holding.get(word)
            if lines is None:
                return []
            if candidates is None or len(lines) < len(candidates):
                candidates = lines
        needle = f" {phrase} "
        found: list[Origin] = []
        for number in candidates or ():
            origin, text = self.lines[number]
            if (text == needle if whole else needle in text) and origin not in found:
                found.append(origin)
                if len(found) == ORIGINS_PER_KEY:
                    break
        return found


class ValueIndex:
    """Key -> origins (deduplicated) and the texts searched by phrase; what one step adds (pending) or a
    slice of the session's (stored)."""

    def __init__(self, entries: dict[str, list[Origin]] | None = None, texts: Texts | None = None) -> None:
        self.entries: dict[str, list[Origin]] = entries or {}
        self.texts = texts or Texts()

    def __len__(self) -> int:
        return len(self.entries)

    def __bool__(self) -> bool:
        return bool(self.entries or self.texts.lines)

    def add(self, key: str, origin: Origin) -> None:
        found = self.entries.setdefault(key, [])
        if (len(found) < ORIGINS_PER_KEY or origin.source in PROMPT) and origin not in found:
            found.append(origin)

    def get(self, key: str) -> list[Origin]:
        found = self.entries.get(key, [])
        if key.startswith("v:") and self.texts.lines:
            phrase = key[2:]
            hits = self.texts.find(phrase, whole=phrase.count(" ") >= MAX_PHRASE)
            found = found + [o for o in hits if o not in found] if hits else found
        return found

    def add_text(self, text: str, origin: Origin, phrase_limit: int | None) -> None:
        """Index a text: as a whole (if short), its sink values and dates, and its phrases when it has
        at most `phrase_limit` words (None: a prompt or pointed document, kept whole and searched by phrase)."""
        normal = words(text)
        if not normal:
            return
        if phrase_limit is not None and (len(text) <= MAX_WHOLE or len(normal) <= MAX_PHRASE):
            self.add("v:" + " ".join(normal), origin)
        for kind, form, _ in entities(text):
            self.add(f"{kind}:{form}", origin)
        if phrase_limit is None:  # a prompt or a document the user pointed at: searched, not keyed
            self.texts.add(origin, normal)
            return
        if len(normal) > phrase_limit:
            return
        for start in range(len(normal)):
            for end in range(start + 1, min(start + MAX_PHRASE, len(normal)) + 1):
                self.add("v:" + " ".join(normal[start:end]), origin)

    def add_message(self, role: str, text: str, step: int) -> None:
        if role in PROMPT:
            self.add_text(text, Origin(role, step=step), None)
        else:  # the assistant's own text: its sink values only (what it says is the model's, not a source)
            origin = Origin("assistant", step=step)
            for kind, form, _ in entities(text):
                self.add(f"{kind}:{form}", origin)

    def add_tool_result(
        self, text: str, tool: str, step: int, labels: FieldLabels, pointed: bool = False,
        extra: tuple[str, ...] = (), placed: dict[str, tuple[str, ...]] | None = None,
    ) -> None:  # fmt: skip
        """Index a tool result: each leaf of a JSON or YAML document with its path and that field's
        labels (plus `extra`: the result's rail labels; plus `placed`: path -> the labels of rails that scored
        in that field, for it and the fields under it), or the text as a whole (with every placed label too)."""
        data = structured(text)
        phrases = None if pointed else MAX_FIELD_PHRASES  # a document the user named is read like a prompt
        everywhere = _merge(extra, tuple(label for found in (placed or {}).values() for label in found))
        if data is None:  # nothing to place the labels on: the whole result carries them
            origin = Origin("tool", tool, step, "", _merge(labels(""), everywhere), pointed)
            self.add_text(text, origin, phrases)
            return
        if len(text) <= MAX_WHOLE:  # also as one text (a YAML reading of prose may have split it), with all labels
            origin = Origin("tool", tool, step, "", _merge(labels(""), everywhere), pointed)
            self.add("v:" + " ".join(words(text)), origin)
        for path, leaf in _paths(data, "$"):
            own = _merge(extra, _placed(placed, path)) if placed else extra
            origin = Origin("tool", tool, step, path, _merge(labels(path), own), pointed)
            if isinstance(leaf, str):
                self.add_text(leaf, origin, phrases)
            else:
                for key in value_keys(leaf):
                    self.add(key, origin)


def _merge(labels: tuple[str, ...], extra: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(sorted(set(labels) | set(extra))) if extra else labels


def _placed(placed: dict[str, tuple[str, ...]], path: str) -> tuple[str, ...]:
    """The labels placed on `path` or on a field above it (`$.items[2]` covers `$.items[2].body`)."""
    found: tuple[str, ...] = ()
    for at, labels in placed.items():
        if path == at or (path.startswith(at) and path[len(at)] in ".["):
            found += labels
    return found


def structured(text: str) -> Any:
    """The JSON or YAML document a tool result holds (a mapping or a list), or None for plain text."""
    head = text.lstrip()[:1]
    if not head or len(text) > MAX_STRUCTURED:
        return None
    if head in "[{":
        try:
            data = json.loads(text)
        except ValueError:
            data = None
        if isinstance(data, dict | list):
            return data
    if ":" not in text and not head == "-":
        return None
    try:
        data = yaml.load(text, Loader=_YAML_LOADER)
    except yaml.YAMLError:
        return None
    return data if isinstance(data, dict | list) else None


_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def text_fields(data: Any) -> Iterator[tuple[str, str]]:
    """(path, text) of every string field of a structured tool result, mapping keys included, by the paths the
    index records (what a rail judges field by field to say where it scored)."""
    for path, leaf in _paths(data, "$"):
        if isinstance(leaf, str):
            yield path, leaf


def _paths(data: Any, path: str) -> Iterator[tuple[str, Any]]:
    if isinstance(data, dict):
        for key, value in data.items():
            if isinstance(key, str):  # keys can be values too: {"Hotel Ritz": ...}, shared_with: {address: ...}
                yield f"{path}.{key}.<key>", key
            yield from _paths(value, f"{path}.{key}")
    elif isinstance(data, list):
        for index, value in enumerate(data):
            yield from _paths(value, f"{path}[{index}]")
    elif data is not None and not isinstance(data, bool):
        yield path, data if isinstance(data, str | int | float) else str(data)


def field_shape(path: str) -> str:
    """A field path without its list positions and root, for matching `labels.fields` patterns:
    `$.transactions[3].subject` -> `transactions.subject`; `$[0].sender` -> `sender`; a mapping's key is
    a field of its own: `$.Hotel Ritz.<key>` -> `Hotel Ritz.<key>` (pattern `*.<key>`)."""
    return re.sub(r"\[\d+\]", "", path).removeprefix("$").lstrip(".")


# --- lookups for rules ----------------------------------------------------------------------------------

_UNKNOWN: Any = object()  # a leaf not traced yet


class ProvenanceView:
    """Where values came from, as rules ask it: a slice of the session's index (the keys of this step's
    calls, read in one round trip) and what this step added. On a list or map, `trusted`, `from_user`
    and `user_pointed` hold when they hold for every leaf; `tainted` and `made_up` when for one."""

    def __init__(self, *indexes: ValueIndex, untrusted: Iterable[str] = ("untrusted",)) -> None:
        self.indexes = indexes
        self.untrusted = frozenset(untrusted)
        # The indexes do not change while a step's calls are decided, and its rules ask about the same
        # values again and again (trusted, tainted, from_user of one argument): each leaf is traced once.
        self._leaves: dict[tuple[type, Any], list[Origin] | None] = {}

    def key_origins(self, key: str) -> list[Origin]:
        if len(self.indexes) == 1:
            return self.indexes[0].get(key)
        found: list[Origin] = []
        for index in self.indexes:
            found.extend(o for o in index.get(key) if o not in found)
        return found

    def leaf_origins(self, leaf: Any) -> list[Origin] | None:
        """The origins of one scalar; None for what has no identity to trace (booleans, null, blanks)."""
        memo = (leaf.__class__, leaf)
        known = self._leaves.get(memo, _UNKNOWN)
        if known is not _UNKNOWN:
            return known
        keys = value_keys(leaf)
        found: list[Origin] | None = None
        if keys:
            found = []
            for key in keys:
                for origin in self.key_origins(key):
                    if origin not in found:
                        found.append(origin)
        if len(self._leaves) < 4096:
            self._leaves[memo] = found
        return found

    def origins(self, value: Any) -> list[Origin]:
        if not isinstance(value, dict | list | tuple):  # one scalar (most arguments rules ask about)
            return list(self.leaf_origins(value) or ())
        found: list[Origin] = []
        for leaf in leaves(value):
            found.extend(o for o in self.leaf_origins(leaf) or () if o not in found)
        return found

    def is_trusted(self, origin: Origin) -> bool:
        return origin.source in PROMPT or (origin.source == "tool" and not self.untrusted.intersection(origin.labels))

    def _every(self, value: Any, test: Callable[[Origin], bool]) -> bool:
        if not isinstance(value, dict | list | tuple):
            origins = self.leaf_origins(value)
            return origins is None or any(test(o) for o in origins)
        per_leaf = (self.leaf_origins(leaf) for leaf in leaves(value))
        return all(any(test(o) for o in origins) for origins in per_leaf if origins is not None)

    def points(self, args: Any) -> bool:
        """Some text value of these arguments came from the user's messages (the user pointed at the call)."""
        return any(isinstance(leaf, str) and any(o.source in PROMPT for o in self.leaf_origins(leaf) or ())
                   for leaf in leaves(args))  # fmt: skip

    # The functions rules call (declared in `cel_runtime`, which calls these for the call being decided).
    def provenance(self, value: Any) -> list[dict[str, Any]]:
        return [o.as_cel() for o in self.origins(value)]

    def from_user(self, value: Any) -> bool:
        return self._every(value, lambda o: o.source in PROMPT)

    def trusted(self, value: Any) -> bool:
        return self._every(value, self.is_trusted)

    def user_pointed(self, value: Any) -> bool:
        return self._every(value, lambda o: o.pointed or o.source in PROMPT)

    def tainted(self, value: Any, label: str) -> bool:
        return any(label in o.labels for o in self.origins(value))

    def made_up(self, value: Any) -> bool:
        return any(origins == [] for origins in map(self.leaf_origins, leaves(value)))

    def user_mentions(self, *phrases: str) -> bool:
        return any(o.source in PROMPT for phrase in phrases for key in value_keys(phrase)[:1]
                   for o in self.key_origins(key))  # fmt: skip
