"""`rail: classifier` cost on CPU: random weights of the real guard-model shapes (Prompt Guard 2 22M ~
DeBERTa-v3-xsmall, 86M ~ mDeBERTa-v3-base: hidden size, layers, heads and vocabulary from their published
configs; no download), run with torch and with ONNX Runtime.

Per size and runtime: CPU and wall ms per KB of English prose (this repository's README, 1 KB texts) at batch 1
(one text at a time) and batch 16 (16 texts in one model call), through the rail's batcher (tokenizing and
windowing included); and the latency the rail adds to one request: the tool_result stage with only the classifier
on a 1 KB and a 4 KB result, p50 and p90. The tokenizer is a WordPiece vocabulary built here from the packages'
documentation in .venv (not the models' own SentencePiece vocabularies, which need a download): the tokens per KB
it gives are printed, and ms per 1,000 tokens too, which carries over to another tokenizer. Random weights score
nothing meaningful: this measures time only.

    .venv/bin/python bench/classifier.py [--sizes 22m,86m] [--runtimes torch,onnx] [--seconds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import os
import platform
import statistics
import sys
import time
from pathlib import Path

from rails.base import Stage
from rails.builtin.classifier import build_classifier
from rails.builtin.classifier_testing import build_model
from rails.config import ClassifierSpec
from rails.pipeline import Configured, RailPipeline

ROOT = Path(__file__).resolve().parents[1]


def documentation(limit: int = 4_000_000) -> list[str]:
    """The tokenizer's training text: package descriptions and docs installed in the virtual environment."""
    texts, total = [], 0
    site = next((ROOT / ".venv" / "lib").glob("python3*/site-packages"))
    for path in sorted(site.glob("*.dist-info/METADATA")):
        text = path.read_text(errors="replace")
        texts.append(text)
        total += len(text)
        if total > limit:
            break
    return texts


def prose(size: int, count: int) -> list[str]:
    """`count` texts of about `size` characters cut from README.md at whitespace."""
    words = (ROOT / "README.md").read_text().split()
    texts, at = [], 0
    while len(texts) < count:
        piece = []
        while sum(map(len, piece)) + len(piece) < size:
            piece.append(words[at % len(words)])
            at += 1
        texts.append(" ".join(piece)[:size])
    return texts


def model_dir(folder: Path, size: str) -> Path:
    directory = folder / size
    if not (directory / "onnx" / "model.onnx").is_file():
        started = time.perf_counter()
        build_model(directory, size, onnx=True, corpus=documentation(), vocab_size=30_000)
        print(f"built {directory} in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    return directory


def rail(directory: Path, runtime: str, max_batch: int, max_wait_ms: float = 0.0, threads: int = 1):
    spec = ClassifierSpec(model=str(directory / "onnx" if runtime == "onnx" else directory), runtime=runtime,
                          max_batch=max_batch, max_wait_ms=max_wait_ms, threads=threads)  # fmt: skip
    return build_classifier("tool_result.classifier", Stage.TOOL_RESULT, spec, Path("/"))


async def throughput(guard, texts: list[str], batch: int, seconds: float) -> dict[str, float]:
    """CPU and wall ms per KB, texts scored `batch` at a time (all of one group in one model call)."""
    await guard.scores(texts[0])  # warm-up
    tokenizer = guard.scorer.model.tokens.tokenizer
    counts = {t: len(tokenizer.encode(t, add_special_tokens=False).ids) for t in texts}  # before the clock
    chars, tokens, at = 0, 0, 0
    cpu, wall = time.process_time(), time.perf_counter()
    while time.perf_counter() - wall < seconds or chars == 0:
        group = [texts[(at + i) % len(texts)] for i in range(batch)]
        at += batch
        await asyncio.gather(*(guard.scores(t) for t in group))
        chars += sum(len(t.encode()) for t in group)
        tokens += sum(counts[t] for t in group)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    kb = chars / 1024
    return {"cpu_ms_kb": cpu * 1000 / kb, "wall_ms_kb": wall * 1000 / kb, "tokens_kb": tokens / kb,
            "cpu_ms_ktok": cpu * 1e6 / tokens}  # fmt: skip


async def added_latency(guard, text: str, seconds: float) -> tuple[float, float]:
    """p50 and p90 of one tool_result stage run with only this rail (ms)."""
    pipeline = RailPipeline([Configured(guard, timeout_s=30.0)])
    await pipeline.run(Stage.TOOL_RESULT, text)
    timings, started = [], time.perf_counter()
    while time.perf_counter() - started < seconds or len(timings) < 5:
        begun = time.perf_counter()
        await pipeline.run(Stage.TOOL_RESULT, text)
        timings.append((time.perf_counter() - begun) * 1000)
    timings.sort()
    return statistics.median(timings), timings[int(0.9 * (len(timings) - 1))]


async def main() -> None:
    import torch

    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="22m,86m")
    parser.add_argument("--runtimes", default="torch,onnx")
    parser.add_argument("--seconds", type=float, default=3.0, help="per measurement")
    parser.add_argument("--dir", type=Path, default=Path("/tmp/sentrail-bench-classifier"), help="model cache")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "classifier.md")
    parser.add_argument("--text-bytes", type=int, default=1024, help="size of the texts of the throughput columns")
    parser.add_argument("--batch", type=int, default=16, help="texts per model call in the batched column")
    parser.add_argument("--threads", type=int, default=1, help="torch / ONNX Runtime threads (1: CPU time is exact)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    one_kb, four_kb = prose(args.text_bytes, 64), prose(4096, 1)[0]
    for size in args.sizes.split(","):
        directory = model_dir(args.dir, size)
        for runtime in args.runtimes.split(","):
            single = rail(directory, runtime, 1, threads=args.threads)
            batched = rail(directory, runtime, args.batch, max_wait_ms=5.0, threads=args.threads)
            b1 = await throughput(single, one_kb, 1, args.seconds)
            b16 = await throughput(batched, one_kb, args.batch, args.seconds)
            defaults = ClassifierSpec()
            waited = rail(directory, runtime, defaults.max_batch, defaults.max_wait_ms, threads=args.threads)
            l1 = await added_latency(waited, one_kb[0], args.seconds)
            l4 = await added_latency(waited, four_kb, args.seconds)
            rows.append((size, runtime, b1, b16, l1, l4))
            print(f"{size} {runtime}: batch 1 {b1['cpu_ms_kb']:.1f} CPU ms/KB, batch 16 {b16['cpu_ms_kb']:.1f}; "
                  f"added p50 {l1[0]:.1f} ms (1 KB), {l4[0]:.1f} ms (4 KB)", file=sys.stderr)  # fmt: skip
    report = render(rows, args)
    print(report)
    args.out.write_text(report)


def cpu_model() -> str:
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.machine()
    return next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")),
                platform.machine())  # fmt: skip


def render(rows: list, args: argparse.Namespace) -> str:
    import numpy
    import onnxruntime
    import tokenizers
    import torch
    import transformers

    lines = [
        "# rail: classifier — CPU cost (random weights of the real shapes)",
        "",
        f"Command: `.venv/bin/python bench/classifier.py --sizes {args.sizes} --runtimes {args.runtimes} "
        f"--seconds {args.seconds:g} --threads {args.threads} --batch {args.batch} --text-bytes {args.text_bytes}`  ",
        f"Date: {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC  ",
        f"Machine: {cpu_model()}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} when it "
        f"ended (shared with other work), no GPU; Python {platform.python_version()}  ",
        f"Versions: torch {torch.__version__}, onnxruntime {onnxruntime.__version__}, transformers "
        f"{transformers.__version__}, tokenizers {tokenizers.__version__}, numpy {numpy.__version__}",
        "",
        f"Texts: {args.text_bytes}-byte pieces of README.md (English technical prose) for the throughput columns. "
        "Tokenizer: WordPiece built from the installed "
        "packages' descriptions (30,000 entries), so tokens per KB differ from the real models' SentencePiece "
        "tokenizers; ms per 1,000 tokens carries over. CPU ms is the process's CPU time (all threads); wall ms the "
        f"elapsed time. Threads: {args.threads} per model call (torch and ONNX Runtime; with more, threads that wait "
        f"for each other on a shared machine spin and inflate CPU time). Batch {args.batch}: {args.batch} texts in one "
        "model call. Added "
        f"latency: the tool_result stage with only this rail (max_batch {ClassifierSpec().max_batch}, max_wait_ms "
        f"{ClassifierSpec().max_wait_ms:g}: the defaults) on one request at a time, a {args.text_bytes}-byte and a "
        "4 KB result.",
        "",
        "| model | runtime | tokens/KB | batch 1: CPU ms/KB | wall ms/KB | CPU ms/1k tokens "
        f"| batch {args.batch}: CPU ms/KB | wall ms/KB | CPU ms/1k tokens "
        f"| added p50 / p90, {args.text_bytes} B | added p50 / p90, 4 KB |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    names = {"22m": "Prompt Guard 2 22M shape", "86m": "Prompt Guard 2 86M shape"}
    for size, runtime, b1, b16, l1, l4 in rows:
        lines.append(
            f"| {names.get(size, size)} | {runtime} | {b1['tokens_kb']:.0f} | {b1['cpu_ms_kb']:.1f} | "
            f"{b1['wall_ms_kb']:.1f} | {b1['cpu_ms_ktok']:.1f} | {b16['cpu_ms_kb']:.1f} | {b16['wall_ms_kb']:.1f} | "
            f"{b16['cpu_ms_ktok']:.1f} | {l1[0]:.1f} / {l1[1]:.1f} ms | {l4[0]:.1f} / {l4[1]:.1f} ms |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    asyncio.run(main())
