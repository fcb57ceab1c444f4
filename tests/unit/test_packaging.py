"""The image definition stays lint-clean (it cannot be built here: no container engine)."""

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_containerfile_passes_hadolint():
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    result = subprocess.run([hadolint, str(ROOT / "Containerfile")], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_containerfile_runs_as_non_root_and_serves():
    text = (ROOT / "Containerfile").read_text()
    assert "USER 10001" in text
    assert 'ENTRYPOINT ["sentrail"]' in text and 'CMD ["serve"]' in text
