"""`rail: classifier`: a local guard model (Prompt Guard 2, a DeBERTa-v3 prompt-injection classifier, ...) scores
the text; at `threshold` or above the rail blocks (or labels, with `action: label`).

A text longer than the model's window is scored in windows of `window` tokens that overlap by `overlap`; the
text's score is the highest window's, and the verdict says where it scored: the character ranges of the windows
at or above the threshold (`Verdict.spans`), which the pipeline uses to tell which fields of a structured tool
result scored. The attack score of a window is the summed probability of the labels that count as attacks
(`labels`; by default every label of the model's `id2label` that is not a benign one such as SAFE, BENIGN or
LABEL_0). The model runs off the event loop (classifier_runtime: a batching thread and a worker pool); a check
that fails or exceeds `timeout_s` blocks (fail closed, in the pipeline). There is no streaming frontier: on the
output stage the filter falls back to its windows.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from ..base import Stage, Verdict
from .classifier_runtime import Batcher, ModelError, batcher, load_model

BENIGN = frozenset(
    {"SAFE", "BENIGN", "LABEL_0", "NEGATIVE", "NEG", "NO", "CLEAN", "LEGIT", "LEGITIMATE", "NORMAL", "OK", "0", "FALSE"}
)


class ClassifierConfigError(ValueError):
    """A classifier entry that cannot be built; `key` is the entry's key it is about (for the error's line)."""

    def __init__(self, message: str, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key


class ClassifierRail:
    """Blocks a text whose attack score (the highest window's) reaches `threshold`."""

    modifies = False
    local = False  # waits on the model's worker pool: the pipeline awaits it with `timeout_s`

    def __init__(
        self,
        name: str,
        stage: Stage,
        scorer: Batcher,
        attack: list[int],
        threshold: float = 0.5,
        window: int = 512,
        overlap: int = 64,
    ) -> None:
        self.name, self.stage, self.scorer = name, stage, scorer
        self.attack, self.threshold, self.window, self.overlap = attack, threshold, window, overlap
        self.names = [scorer.model.labels[i] for i in attack]

    async def scores(self, content: str) -> list[tuple[int, int, float, str]]:
        """(character start, end, attack score, the attack label most likely) of each window of the text."""
        scored = await asyncio.wrap_future(self.scorer.submit(content, self.window, self.overlap))
        found = []
        for start, end, probabilities in scored:
            picked = probabilities[self.attack]
            found.append((start, end, float(picked.sum()), self.names[int(picked.argmax())]))
        return found

    async def check(self, content: str) -> Verdict:
        if not content.strip():
            return Verdict.allow()
        windows = await self.scores(content)
        hits = [w for w in windows if w[2] >= self.threshold]
        if not hits:
            return Verdict.allow()
        best = max(hits, key=lambda w: w[2])
        spans = merge((start, end) for start, end, _, _ in hits)
        where = ", ".join(f"{start}-{end}" for start, end in spans)
        return Verdict.block(
            f"classifier score {best[2]:.2f} >= {self.threshold:.2f} ({best[3]}; characters {where} of {len(content)})",
            spans,
        )


def merge(ranges: Any) -> tuple[tuple[int, int], ...]:
    """Overlapping or touching character ranges joined, in order."""
    merged: list[tuple[int, int]] = []
    for start, end in sorted(ranges):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return tuple(merged)


def build_classifier(name: str, stage: Stage, spec: Any, base: Path) -> ClassifierRail:
    """The rail for a `rail: classifier` entry (`spec`: rails.config.ClassifierSpec); `base`: the folder of the
    rails file, against which a relative `model` is resolved. Raises `ClassifierConfigError` saying what is wrong."""
    if not spec.model:
        raise ClassifierConfigError("`model:` is required: a local model directory (Hugging Face or ONNX export)")
    directory = (base / spec.model).resolve()
    try:
        model = load_model(directory, spec.runtime, spec.threads)
    except ModelError as exc:
        raise ClassifierConfigError(str(exc), "model") from None
    attack = attack_labels(model.labels, spec.labels)
    if model.max_positions is not None and spec.window > model.max_positions:
        raise ClassifierConfigError(
            f"window {spec.window} is longer than the model's max_position_embeddings ({model.max_positions})", "window"
        )
    body = spec.window - model.tokens.specials
    if spec.overlap >= body:
        raise ClassifierConfigError(
            f"overlap {spec.overlap} must be shorter than the window's {body} text tokens "
            f"(window {spec.window} less {model.tokens.specials} special tokens)",
            "overlap",
        )
    scorer = batcher(model, spec.max_batch, spec.max_wait_ms / 1000, spec.workers)
    return ClassifierRail(name, stage, scorer, attack, spec.threshold, spec.window, spec.overlap)


def attack_labels(names: list[str], wanted: list[str | int]) -> list[int]:
    """Indices of the labels that count as attacks: `wanted` (names from id2label, or indices), or by default
    every label whose name is not a benign one."""
    if not wanted:
        attack = [i for i, n in enumerate(names) if n.upper() not in BENIGN]
        if not attack or len(attack) == len(names):
            raise ClassifierConfigError(
                f"cannot tell which of the model's labels {names} are attacks: list them under `labels:`", "labels"
            )
        return attack
    attack = []
    for label in wanted:
        if isinstance(label, int) and 0 <= label < len(names):
            attack.append(label)
        elif isinstance(label, str) and label in names:
            attack.append(names.index(label))
        else:
            raise ClassifierConfigError(
                f"label {label!r} is not one of the model's labels {names} (id2label)", "labels"
            )
    if len(set(attack)) == len(names):
        raise ClassifierConfigError(
            f"every label of the model {names} counts as an attack: every text would score 1", "labels"
        )
    return sorted(set(attack))
