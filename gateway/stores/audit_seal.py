"""Sealing the audit log with a key that never enters Redis (see gateway/stores/audit.py).

A sealed record carries `kid` (its key's id) and `chain` (its tenant's chain), and its `hash` is
HMAC-SHA256(key, canonical record without `hash`); the record holds `prev`, so each seal covers the chain
up to it. Whoever can write to Redis but lacks the key can no longer edit a record and recompute the rest.
The chain's head (`seq:hash:kid:tag`) is sealed too (a tag over the tenant, seq and hash), so cutting the
tail and resetting the head needs the key, or a head value seen earlier (see "what it does not catch" in
the README). A trim leaves a sealed anchor (the last trimmed record's seq, hash and stream id) that
verification starts from.

Keys: a key file holds one secret per line (at least 32 characters, e.g. `openssl rand -hex 32`; blank
lines and `#` comments are skipped); a keyring is such a file or a folder of them. A key's id is derived
from it (16 hex digits), so rotating is: write a new key file, point `audit_key_file` at it, keep the old
one in the `audit_keyring` folder for verification. Records written before a key was set are `unsealed`
(plain SHA-256, no `kid`): verification accepts them only before the first sealed record.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from gateway.settings import ConfigError, Settings

log = structlog.get_logger("sentrail.audit")
GENESIS = "0" * 64
MIN_KEY_CHARS = 32
DEV_KEY_NAME = "audit.key"


class AuditKeyError(ConfigError):
    """An audit key or keyring that cannot be used."""


class AuditSealError(ConfigError):
    """An operation that needs the audit key, attempted without it."""


def canonical(record: dict[str, Any]) -> bytes:
    return json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str).encode()


def plain_hash(record: dict[str, Any]) -> str:
    """An unsealed record's hash: SHA-256 of its canonical JSON without `hash` (anyone can compute it)."""
    return hashlib.sha256(canonical({k: v for k, v in record.items() if k != "hash"})).hexdigest()


def key_id(secret: bytes) -> str:
    return hashlib.sha256(b"sentrail-audit-kid\0" + secret).hexdigest()[:16]


class Keyring:
    """Audit keys by id; `current` seals new records (None: this process writes unsealed records)."""

    def __init__(self, secrets_: Iterable[bytes] = (), current: bytes | None = None) -> None:
        self._macs = {key_id(s): hmac.new(s, digestmod=hashlib.sha256) for s in (*secrets_, *filter(None, [current]))}
        self.current = key_id(current) if current is not None else None

    @classmethod
    def from_secrets(cls, secrets_: Iterable[bytes]) -> Keyring:
        """A keyring whose first secret is the current key."""
        listed = list(secrets_)
        return cls(listed[1:], listed[0] if listed else None)

    @property
    def kids(self) -> list[str]:
        return sorted(self._macs)

    def holds(self, kid: Any) -> bool:
        return isinstance(kid, str) and kid in self._macs

    def mac(self, kid: str, data: bytes) -> str:
        digest = self._macs[kid].copy()  # the key's pads are hashed once, at load
        digest.update(data)
        return digest.hexdigest()

    def seal(self, record: dict[str, Any]) -> str:
        """The record's sealed hash under its `kid` (the record holds everything but `hash`)."""
        return self.mac(record["kid"], canonical(record))

    def valid(self, kid: str, data: bytes, tag: Any) -> bool:
        return isinstance(tag, str) and hmac.compare_digest(self.mac(kid, data).encode(), tag.encode())


@dataclass(frozen=True)
class Head:
    """A chain's head in Redis: `seq:hash` (unsealed) or `seq:hash:kid:tag` (sealed)."""

    seq: int
    hash: str
    kid: str | None = None
    tag: str | None = None

    @classmethod
    def parse(cls, raw: bytes | None) -> Head | None:
        if not raw:
            return None
        seq, digest, *sealed = raw.decode().split(":")
        return cls(int(seq), digest, *sealed[:2]) if len(sealed) == 2 else cls(int(seq), digest)

    @classmethod
    def sealed(cls, keyring: Keyring, chain: str, seq: int, digest: str) -> Head:
        assert keyring.current is not None
        return cls(seq, digest, keyring.current, keyring.mac(keyring.current, cls.message(chain, seq, digest)))

    @staticmethod
    def message(chain: str, seq: int, digest: str) -> bytes:
        return f"sentrail-audit-head\0{chain}\0{seq}\0{digest}".encode()

    def encode(self) -> bytes:
        sealed = f":{self.kid}:{self.tag}" if self.kid else ""
        return f"{self.seq}:{self.hash}{sealed}".encode()


@dataclass(frozen=True)
class Anchor:
    """Where a trimmed chain resumes: the last trimmed record's seq, hash and stream id, sealed."""

    seq: int
    hash: str
    id: str
    sealed: bool  # was the last trimmed record sealed (then every later record must be)
    kid: str
    tag: str

    @classmethod
    def make(cls, keyring: Keyring, chain: str, seq: int, digest: str, entry_id: str, sealed: bool) -> Anchor:
        assert keyring.current is not None
        body = cls.message(chain, seq, digest, entry_id, sealed)
        return cls(seq, digest, entry_id, sealed, keyring.current, keyring.mac(keyring.current, body))

    @classmethod
    def parse(cls, raw: bytes) -> Anchor:
        data = json.loads(raw)
        return cls(int(data["seq"]), str(data["hash"]), str(data["id"]), bool(data["sealed"]),
                   str(data["kid"]), str(data["tag"]))  # fmt: skip

    @staticmethod
    def message(chain: str, seq: int, digest: str, entry_id: str, sealed: bool) -> bytes:
        return b"sentrail-audit-anchor\0" + canonical(
            {"chain": chain, "seq": seq, "hash": digest, "id": entry_id, "sealed": sealed}
        )

    def encode(self) -> bytes:
        return canonical(self.__dict__)

    def problem(self, keyring: Keyring, chain: str) -> str | None:
        if not keyring.holds(self.kid):
            return f"the trim anchor (seq {self.seq}) is sealed with key {self.kid}, which the keyring does not hold"
        if not keyring.valid(self.kid, self.message(chain, self.seq, self.hash, self.id, self.sealed), self.tag):
            return f"the trim anchor (seq {self.seq}) is forged: its seal does not match"
        return None


class ChainCheck:
    """Checks one chain's records, oldest first: `feed` names what is wrong with a record, else None."""

    def __init__(self, chain: str, keyring: Keyring, anchor: Anchor | None = None, head: Head | None = None):
        self.chain, self.keyring, self.head = chain, keyring, head
        self.seq, self.prev = (anchor.seq, anchor.hash) if anchor else (0, GENESIS)
        self.sealed_from = anchor.seq if anchor and anchor.sealed else None  # first sealed seq (or the anchor's)
        self.unsealed: list[int] = []  # seqs of unsealed records (all before `sealed_from`)
        self.kids: set[str] = set()
        self.count = 0
        self.head_hash = anchor.hash if anchor and head and head.seq == anchor.seq else None

    def feed(self, entry_id: str, record: dict[str, Any] | None) -> str | None:
        self.count += 1
        if not isinstance(record, dict):
            return f"record {entry_id} is not readable JSON"
        where, seq, kid = f"record {entry_id} (seq {record.get('seq')})", record.get("seq"), record.get("kid")
        if kid is not None:
            if not self.keyring.holds(kid):
                return f"{where} is sealed with key {kid}, which the keyring does not hold"
            if record.get("chain") != self.chain:
                return f"{where} belongs to chain {record.get('chain')!r}, not {self.chain!r}"
            body = {k: v for k, v in record.items() if k != "hash"}
            if not self.keyring.valid(kid, canonical(body), record.get("hash")):
                return f"{where} was edited: its seal does not match its content"
            if self.sealed_from is None:
                self.sealed_from = seq
            self.kids.add(kid)
        else:
            if record.get("hash") != plain_hash(record):
                return f"{where} was edited: its hash does not match its content"
            if self.sealed_from is not None:
                return f"{where} is not sealed but follows sealed records (from seq {self.sealed_from}): " \
                       "rewritten without the key"  # fmt: skip
            self.unsealed.append(seq)
        expected = self.seq + 1
        if seq != expected or record.get("prev") != self.prev:
            what = "is out of order" if isinstance(seq, int) and seq < expected else "follows a deleted record"
            if seq == expected:
                what = "does not chain onto the record before it"
            return f"{where} {what} (expected seq {expected})"
        self.seq, self.prev = expected, record["hash"]
        if self.head is not None and seq == self.head.seq:
            self.head_hash = self.prev
        return None

    def head_problem(self) -> str | None:
        """After the last record: what is wrong with the head (read before the records), else None."""
        head = self.head
        if head is None:
            return None if self.count == 0 and self.seq == 0 else "the chain's head is missing"
        if self.sealed_from is not None:
            if head.kid is None:
                return "the head is not sealed although the chain is: it was reset without the key"
            if not self.keyring.holds(head.kid):
                return f"the head is sealed with key {head.kid}, which the keyring does not hold"
            if not self.keyring.valid(head.kid, Head.message(self.chain, head.seq, head.hash), head.tag):
                return f"the head (seq {head.seq}) is forged: its seal does not match"
        if head.seq > self.seq:
            return f"the chain ends at seq {self.seq} but its head says {head.seq}: records were removed from the end"
        if self.head_hash != head.hash:
            return f"the head (seq {head.seq}) does not match the chain's record at seq {head.seq}"
        return None

    def summary(self, anchor: Anchor | None) -> str:
        notes = []
        if anchor is not None:
            notes.append(f"seq 1-{anchor.seq} trimmed (sealed anchor at {anchor.id})")
        if self.unsealed:
            notes.append(f"seq {self.unsealed[0]}-{self.unsealed[-1]} were written before the key was set: unsealed")
        suffix = "".join(f"; {note}" for note in notes)
        if self.sealed_from is None:
            return f"{self.count} records, consistent but UNSEALED: written without an audit key, so anyone " \
                   f"with write access to Redis could have rewritten them{suffix}"  # fmt: skip
        kids = ", ".join(sorted(self.kids)) or (anchor.kid if anchor else "")
        return f"{self.count} records, chain intact and sealed (key {kids}), head {self.prev[:16]}{suffix}"


def read_keys(path: Path) -> list[bytes]:
    """The secrets in a key file (one a line), or in every file of a folder."""
    files = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith(".")) if path.is_dir() else [path]
    found = []
    for file in files:
        try:
            text = file.read_text()
            mode = file.stat().st_mode
        except (OSError, UnicodeDecodeError) as exc:
            raise AuditKeyError(f"cannot read audit key file {file}: {exc} (a key is a line of text, e.g. the "
                                "output of `openssl rand -hex 32`)") from None  # fmt: skip
        if mode & 0o077:
            log.warning("audit_key_file_readable_by_others", path=str(file), mode=oct(mode & 0o777))
        for number, line in enumerate(text.splitlines(), 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            if len(line) < MIN_KEY_CHARS:
                raise AuditKeyError(f"{file}:{number}: an audit key needs at least {MIN_KEY_CHARS} characters")
            found.append(line.encode())
    return found


def load_key_file(path: Path) -> bytes:
    keys = read_keys(path)
    if len(keys) != 1 or path.is_dir():
        raise AuditKeyError(f"the audit key file {path} must hold exactly one key (it holds {len(keys)})")
    return keys[0]


def dev_key(path: Path) -> bytes:
    """The development key at `path`, made once (0600, created atomically so concurrent starts agree)."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        scratch = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
        descriptor = os.open(scratch, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(descriptor, f"# Sentrail development audit key\n{secrets.token_hex(32)}\n".encode())
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
        try:
            os.link(scratch, path)
        except FileExistsError:
            pass
        finally:
            scratch.unlink()
    return load_key_file(path)


def audit_keyring(settings: Settings, *, serving: bool, extra: Iterable[str] = ()) -> Keyring:
    """The keys a gateway (`serving`) or the CLI uses. The sealing key is `audit_key_file`; else, in
    development mode, a key made once under the home folder (the gateway) or found there (the CLI);
    `audit_keyring` and `extra` add keys that only verify. Never stored in Redis."""
    current = None
    development = settings.home_path / DEV_KEY_NAME
    if settings.audit_key_file:
        current = load_key_file(Path(settings.audit_key_file))
    elif serving and settings.dev_mode:
        current = dev_key(development)
        log.warning("audit_development_key", path=str(development),
                    detail="audit records are sealed with a development key; production must set audit_key_file "
                           "(SENTRAIL_AUDIT_KEY_FILE) to a key kept off the Redis host")  # fmt: skip
    elif not serving and development.exists():
        current = load_key_file(development)
    elif serving:
        log.warning("audit_unsealed", detail="audit_key_file is not set: audit records are chained but not "
                    "sealed, so anyone with write access to Redis can rewrite them undetected")  # fmt: skip
    others = [settings.audit_keyring, *extra]
    return Keyring([key for path in others if path for key in read_keys(Path(path))], current)
