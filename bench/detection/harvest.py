"""A benign set harvested from real files on this machine: documentation, HTML pages, JSON documents, code.

Deterministic: roots and files are walked in sorted order; every random choice comes from a generator seeded
with SEED and the package's name or the file's path below its root; the final draw per source ranks texts by a
hash of SEED and their place, so that a package installed or removed changes little else (the manifest records
the set used). Per source (docs, html, json, code) at most FILES_PER_PACKAGE files of each
package and CHUNKS_PER_FILE chunks of each file, then at most CAP[source] texts. Chunks are cut at paragraph
(docs) or line (html, code) boundaries to a size drawn between MIN_CHARS and MAX_CHARS; a JSON document is
used whole when it is short, else as sub-documents of that size (pretty or compact, as APIs send them).
Deduplicated by content. Each text records its file. Packages that are attack sources of this bench (and
Sentrail itself) are left out; texts that talk about attacks (ATTACK_TOPIC, a rule on the text only, never on
the rails' output) are kept and reported apart.

The set is split by package: a package whose name hashes even is `dev` (its false positives may be read by
whoever tunes the rails: bench/results/detection_dev_fp.md), odd is `held-out` (only its rates are reported).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import random
import re
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

SEED = 17
MIN_CHARS, MAX_CHARS = 300, 3000
FILES_PER_PACKAGE = {"docs": 6, "html": 12, "json": 30, "code": 4}
CHUNKS_PER_FILE = {"docs": 2, "html": 3, "json": 3, "code": 2}
CAP = {"docs": 1000, "html": 800, "json": 800, "code": 1000}
MAX_FILE_BYTES = 3_000_000
EXCLUDED = {"agentdojo", "garak", "pyrit", "sentrail"}  # attack sources of this bench, and the project itself
ATTACK_TOPIC = re.compile(
    r"prompt[ _-]?injection|jailbreak|(ignore|disregard) (all )?(the )?(previous|prior) instructions|red[ -]team"
    r"|adversarial (prompt|attack)",
    re.IGNORECASE,
)
DOC_NAMES = re.compile(r"^(readme|changes|changelog|history|news|usage|faq)(\.(md|rst|txt|markdown))?(\.gz)?$", re.I)
DOC_SUFFIXES = {".md", ".rst", ".markdown"}


@dataclass(frozen=True)
class Root:
    path: Path
    alias: str  # how paths under it are written in the manifest
    kinds: tuple[str, ...]  # which sources it feeds


REPO = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("SENTRAIL_HOME") or Path.home() / ".cache" / "sentrail") / "bench" / "harvest"


def roots(repo: Path = REPO) -> list[Root]:
    home, repo = Path.home(), repo.resolve()
    py = home / ".pyenv" / "versions" / "3.11.7" / "lib" / "python3.11"
    rust = home / ".rustup" / "toolchains" / "stable-x86_64-unknown-linux-gnu" / "share" / "doc" / "rust" / "html"
    every = ("docs", "html", "json", "code")
    return [
        Root(repo / ".venv" / "lib" / "python3.11" / "site-packages", "venv-site-packages", every),
        Root(py / "site-packages", "python3.11-site-packages", every),
        Root(py, "python3.11-stdlib", every),
        Root(Path("/usr/lib/python3/dist-packages"), "debian-dist-packages", every),
        Root(Path("/usr/lib/google-cloud-sdk/lib/third_party"), "gcloud-third-party", every),
        Root(Path("/usr/lib/google-cloud-sdk/platform"), "gcloud-platform", every),
        Root(Path("/usr/share/doc"), "usr-share-doc", every),
        Root(Path("/usr/lib/node_modules/npm/node_modules"), "npm-modules", every),
        Root(Path("/usr/lib/node_modules/npm/docs"), "npm-docs", every),
        Root(rust, "rust-doc", ("html",)),
    ]


@dataclass
class Text:
    id: str  # sha256 of the text, 16 hex digits
    source: str  # docs | html | json | code
    package: str
    split: str  # dev | held-out
    path: str  # alias/relative path
    offset: int  # the chunk's place in the file (characters; JSON: index of the sub-document)
    attack_topic: bool
    text: str


def where(root: Root, path: Path) -> str:
    """A file's place as the manifest writes it: the same wherever the root is on a machine."""
    return f"{root.alias}/{path.relative_to(root.path)}"


def split_of(package: str) -> str:
    return "dev" if hashlib.sha256(package.encode()).digest()[0] % 2 == 0 else "held-out"


def package_of(relative: Path) -> str:
    first = relative.parts[0]
    if first.startswith("@") and len(relative.parts) > 2:  # npm scope
        first = f"{first}/{relative.parts[1]}"
    name = re.sub(r"-[^-]*\.(dist|egg)-info$", "", first)
    name = re.sub(r"\.(py|pth|so)$", "", name)
    return re.sub(r"[-_.]+", "-", name).strip("-").lower()


def kind_of(path: Path) -> str | None:
    name, suffix = path.name, path.suffix.lower()
    if suffix in (".html", ".htm"):
        return "html"
    if suffix == ".json":
        return "json"
    if suffix == ".py":
        return "code"
    metadata = name == "METADATA" and path.parent.name.endswith(".dist-info")
    if suffix in DOC_SUFFIXES or DOC_NAMES.match(name) or metadata:
        return "docs"
    return None


def candidates(repo: Path) -> dict[str, dict[str, list[tuple[Root, Path]]]]:
    """{source: {package: [(root, file)]}}, sorted; a folder that is itself a root is walked only as that root."""
    all_roots = roots(repo)
    found: dict[str, dict[str, list[tuple[Root, Path]]]] = defaultdict(lambda: defaultdict(list))
    starts = {r.path for r in all_roots}
    for root in all_roots:
        if not root.path.is_dir():
            continue
        for folder, dirs, files in os.walk(root.path):
            here = Path(folder)
            dirs[:] = sorted(d for d in dirs if here / d not in starts and d not in ("__pycache__", ".git"))
            for name in sorted(files):
                path = here / name
                kind = kind_of(path)
                if kind is None or kind not in root.kinds or path.is_symlink():
                    continue
                relative = path.relative_to(root.path)
                package = package_of(relative) if len(relative.parts) > 1 or kind != "docs" else root.alias
                if package in EXCLUDED or any(e in package for e in EXCLUDED):
                    continue
                found[kind][package].append((root, path))
    return found


def read(path: Path) -> str | None:
    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            return None
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
        text = raw.decode("utf-8")
    except (OSError, UnicodeDecodeError, EOFError, gzip.BadGzipFile):
        return None
    if "\x00" in text:
        return None
    if path.name == "METADATA":  # a package's long description: the body after the headers
        text = text.partition("\n\n")[2]
    return text


def chunks(text: str, kind: str, rng: random.Random) -> list[tuple[int, str]]:
    """(offset, chunk) cut at paragraph (docs) or line boundaries, each about a size drawn in [MIN, MAX]."""
    units = re.split(r"(?<=\n\n)", text) if kind == "docs" else text.splitlines(keepends=True)
    out, start, offset, current, target = [], 0, 0, "", rng.randint(MIN_CHARS, MAX_CHARS)
    for unit in units:
        while len(unit) > MAX_CHARS:  # one huge paragraph or line (minified HTML): cut it
            head, unit = unit[:MAX_CHARS], unit[MAX_CHARS:]
            if current:
                out.append((start, current))
                current = ""
            out.append((offset, head))
            offset += len(head)
            start = offset
        if not current:
            start = offset
        current += unit
        offset += len(unit)
        if len(current) >= target:
            out.append((start, current))
            current, target = "", rng.randint(MIN_CHARS, MAX_CHARS)
    if current:
        out.append((start, current))
    return [(o, c) for o, c in out if len(c.strip()) >= MIN_CHARS // 2]


def json_documents(text: str, rng: random.Random) -> list[tuple[int, str]]:
    """A short document whole; a long one as its sub-documents (dicts / lists) of MIN..MAX characters."""
    if len(text) <= MAX_CHARS:
        return [(0, text)] if len(text.strip()) >= MIN_CHARS else []
    try:
        data = json.loads(text)
    except ValueError:
        return []
    found: list[str] = []
    queue: list[Any] = [data]
    while queue and len(found) < 200:
        node = queue.pop(0)
        children = list(node.values()) if isinstance(node, dict) else node if isinstance(node, list) else []
        for child in children:
            if not isinstance(child, dict | list):
                continue
            compact = json.dumps(child, ensure_ascii=False, separators=(",", ":"))
            if len(compact) > MAX_CHARS:
                queue.append(child)
            elif len(compact) >= MIN_CHARS:
                found.append(compact if rng.random() < 0.5 else json.dumps(child, ensure_ascii=False, indent=2))
    return list(enumerate(found))


def harvest(repo: Path) -> list[Text]:
    texts: dict[str, Text] = {}
    for kind, packages in sorted(candidates(repo).items()):
        pool: list[Text] = []
        for package, files in sorted(packages.items()):
            rng = random.Random(f"{SEED}:{kind}:{package}")
            chosen = sorted(rng.sample(files, min(FILES_PER_PACKAGE[kind], len(files))), key=lambda f: where(*f))
            for root, path in chosen:
                content = read(path)
                if not content:
                    continue
                relative = where(root, path)
                file_rng = random.Random(f"{SEED}:{relative}")
                pieces = json_documents(content, file_rng) if kind == "json" else chunks(content, kind, file_rng)
                for offset, piece in file_rng.sample(pieces, min(CHUNKS_PER_FILE[kind], len(pieces))):
                    digest = hashlib.sha256(piece.encode()).hexdigest()[:16]
                    pool.append(Text(digest, kind, package, split_of(package), relative, offset,
                                     bool(ATTACK_TOPIC.search(piece)), piece))  # fmt: skip
        unique = list({t.id: t for t in pool if t.id not in texts}.values())
        unique.sort(key=lambda t: hashlib.sha256(f"{SEED}:{t.path}:{t.offset}".encode()).digest())  # a stable
        for t in sorted(unique[: CAP[kind]], key=lambda t: (t.path, t.offset)):  # draw: a package more or less
            texts[t.id] = t  # on the machine changes the rest of the set little
    return list(texts.values())


def load(cache: Path, repo: Path, manifest: Path | None = None) -> list[Text]:
    """The harvested set from the cache, harvested (and cached, manifest written) the first time."""
    if cache.exists():
        return [Text(**json.loads(line)) for line in cache.read_text().splitlines() if line.strip()]
    texts = harvest(repo)
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text("".join(json.dumps(asdict(t), ensure_ascii=False) + "\n" for t in texts))
    if manifest is not None:
        write_manifest(texts, manifest)
    return texts


def write_manifest(texts: list[Text], manifest: Path) -> None:
    """The set without its texts: enough to check that a harvest on another day picked the same ones."""
    header = (
        "# The harvested benign set (bench/detection/harvest.py): id = sha256 of the text (16 hex), source, split,\n"
        "# package, attack_topic, file (root alias / path), offset (characters; JSON: sub-document index), length\n"
    )
    rows = [f"{t.id}\t{t.source}\t{t.split}\t{t.package}\t{int(t.attack_topic)}\t{t.path}\t{t.offset}\t{len(t.text)}"
            for t in texts]  # fmt: skip
    manifest.write_text(header + "\n".join(rows) + "\n")


def real_path(text: Text) -> Path:
    """The file a text came from, on this machine."""
    alias, _, relative = text.path.partition("/")
    return next(r.path for r in roots() if r.alias == alias) / relative


def show(ids: list[str], cache: Path) -> None:
    """Print harvested texts by id, from the local harvest."""
    texts = {t.id: t for t in load(cache, REPO)}
    for wanted in ids:
        t = texts.get(wanted)
        if t is None:
            print(f"=== {wanted}: not in {cache}")
            continue
        print(f"=== {t.id} {t.source} {t.split} {real_path(t)} @ {t.offset} ({len(t.text)} chars)\n{t.text}\n")


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="Print harvested benign texts by id (see detection_dev_fp.md).")
    parser.add_argument("--show", nargs="+", required=True, metavar="ID")
    parser.add_argument("--cache", type=Path, default=CACHE / f"benign-seed{SEED}.jsonl")
    show(parser.parse_args().show, parser.parse_args().cache)
