"""Run another revision's copy of a benchmark script, with its own code, in a process of its own on this
environment, so that two revisions compare in one sitting: `--baseline REV` of the bench scripts."""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def report(revision: str, script: str, paths: list[str], args: list[str]) -> tuple[str, str]:
    """(the revision's short commit, what its `script` printed), from `paths` of it extracted with git archive."""
    commit = subprocess.run(["git", "rev-parse", "--short", revision], cwd=ROOT, check=True, capture_output=True,
                            text=True).stdout.strip()  # fmt: skip
    with tempfile.TemporaryDirectory() as folder:
        archive = subprocess.run(["git", "archive", commit, script, *paths], cwd=ROOT, check=True,
                                 capture_output=True).stdout  # fmt: skip
        subprocess.run(["tar", "-x", "-C", folder], input=archive, check=True)
        out = subprocess.run([sys.executable, str(Path(folder) / script), *args], cwd=folder, check=True,
                             capture_output=True, text=True).stdout  # fmt: skip
    return commit, out.strip()
