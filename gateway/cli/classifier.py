"""`sentrail classifier build-test-model | score`: guard-model directories for `rail: classifier`.

build-test-model  write a DeBERTa-v2 sequence classifier with a locally trained tokenizer (no download): random
                  weights of a real size (tiny, 22m, 86m) for plumbing and latency, or `--trigger WORD` for a tiny
                  model that flags texts holding WORD; `--onnx` adds its ONNX export under DIR/onnx
score             score texts with a model directory as the rail would: each window's characters and attack score
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from rails.base import Stage


def add_commands(classifier: argparse._SubParsersAction) -> None:
    build = classifier.add_parser("build-test-model", help="write a local test model directory (no download)")
    build.add_argument("dir", type=Path)
    build.add_argument("--size", choices=["tiny", "22m", "86m"], default="tiny", help="hyperparameters (default tiny)")
    build.add_argument("--trigger", help="train a tiny model to flag texts holding this word")
    build.add_argument("--onnx", action="store_true", help="also export DIR/onnx/model.onnx")
    score = classifier.add_parser("score", help="score texts (arguments, or lines of stdin) with a model directory")
    score.add_argument("dir", type=Path)
    score.add_argument("text", nargs="*")
    score.add_argument("--labels", default="", help="comma-separated attack labels (default: the non-benign ones)")
    score.add_argument("--window", type=int, default=512)
    score.add_argument("--overlap", type=int, default=64)
    score.add_argument("--runtime", choices=["auto", "onnx", "torch"], default="auto")


def run(args: argparse.Namespace) -> int:
    if args.action == "build-test-model":
        from rails.builtin.classifier_testing import build_model, describe

        if args.trigger and args.size != "tiny":
            print("sentrail: --trigger trains the tiny size only", file=sys.stderr)
            return 2
        directory = build_model(args.dir, args.size, args.trigger, onnx=args.onnx)
        print(f"{directory}: {describe(directory)}" + (f"; {directory / 'onnx'}" if args.onnx else ""))
        return 0
    return asyncio.run(_score(args))


async def _score(args: argparse.Namespace) -> int:
    from rails.builtin.classifier import ClassifierConfigError, build_classifier
    from rails.config import ClassifierSpec

    labels: list[str | int] = [label for label in args.labels.split(",") if label]
    spec = ClassifierSpec(model=str(args.dir), labels=labels, window=args.window, overlap=args.overlap,
                          runtime=args.runtime)  # fmt: skip
    try:
        rail = build_classifier("classifier", Stage.INPUT, spec, Path.cwd())
    except ClassifierConfigError as exc:
        print(f"sentrail: {exc}", file=sys.stderr)
        return 2
    for text in args.text or [line.rstrip("\n") for line in sys.stdin]:
        windows = await rail.scores(text)
        best = max((w[2] for w in windows), default=0.0)
        where = " ".join(f"{start}-{end}:{score:.3f}" for start, end, score, _ in windows)
        print(f"{best:.3f}\t{where}\t{text[:80]}")
    return 0
