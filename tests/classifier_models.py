"""Guard-model directories for the classifier rail's tests, built once per test process (no downloads).

`TRIGGER`: the word the trained model scores as INJECTION (every other text it scores SAFE)."""

from pathlib import Path

from rails.builtin.classifier_testing import build_model

TRIGGER = "zebracorn"
_BUILT: dict[str, Path] = {}  # what -> its directory (the first test that asked chose where)


def trained(root: Path) -> Path:
    """A tiny DeBERTa-v2 classifier trained to flag `TRIGGER`; `onnx/` holds its ONNX export."""
    if "trained" not in _BUILT:
        _BUILT["trained"] = build_model(root / "trained", trigger=TRIGGER, onnx=True)
    return _BUILT["trained"]


def pinned(root: Path, bias: float) -> Path:
    """Random weights with the head pinned: INJECTION's logit leads SAFE's by `bias` on every text."""
    key = f"pinned{bias:+}"
    if key not in _BUILT:
        _BUILT[key] = build_model(root / key, bias=bias)
    return _BUILT[key]
