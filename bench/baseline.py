"""Another revision's code beside this one's, so that two revisions compare in one sitting: `--baseline REV` of
the bench scripts (its copy of a script run in a process of its own, or a gateway started from its packages)."""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def extract(revision: str, paths: list[str], folder: Path) -> str:
    """Write `paths` of `revision` (those it has) into `folder` (git archive); return its short commit."""
    commit = subprocess.run(["git", "rev-parse", "--short", revision], cwd=ROOT, check=True, capture_output=True,
                            text=True).stdout.strip()  # fmt: skip
    present = [path for path in paths if _has(commit, path)]
    archive = subprocess.run(["git", "archive", commit, *present], cwd=ROOT, check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive, check=True)
    return commit


def report(revision: str, script: str, paths: list[str], args: list[str]) -> tuple[str, str]:
    """(the revision's short commit, what its copy of `script` printed), run with `paths` of it beside."""
    with tempfile.TemporaryDirectory() as folder:
        commit = extract(revision, [script, *paths], Path(folder))
        out = subprocess.run([sys.executable, str(Path(folder) / script), *args], cwd=folder, check=True,
                             capture_output=True, text=True).stdout  # fmt: skip
    return commit, out.strip()


def _has(commit: str, path: str) -> bool:
    found = subprocess.run(["git", "cat-file", "-e", f"{commit}:{path}"], cwd=ROOT, stderr=subprocess.DEVNULL)
    return found.returncode == 0
