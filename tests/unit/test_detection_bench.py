"""The pure logic of bench/detection/: threshold choice, leave-one-source-out, the harvest's split and chunks."""

import math
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from detection.harvest import MAX_CHARS, chunks, json_documents, package_of, split_of
from detection.metrics import choose_threshold, leave_one_out


def test_threshold_is_the_best_tpr_within_the_fpr_budget() -> None:
    negatives = [0.0] * 98 + [0.4, 0.6]  # 1% of them reach 0.6, 2% reach 0.4
    positives = [0.2, 0.4, 0.6, 0.8]
    assert choose_threshold(positives, negatives, max_fpr=0.01) == 0.6
    assert choose_threshold(positives, negatives, max_fpr=0.02) == 0.2  # no negative between 0.0 and 0.4


def test_threshold_prefers_the_highest_among_equal_tprs() -> None:
    assert choose_threshold([0.9, 0.9], [0.0, 0.1, 0.5]) == 0.9


def test_threshold_flags_nothing_when_no_finite_one_fits() -> None:
    assert choose_threshold([0.5], [0.5, 0.5]) == math.inf


def test_leave_one_out_never_uses_the_left_out_source() -> None:
    scores = {
        "a": ("attack", [0.8, 0.8]),
        "b": ("attack", [0.3, 0.3]),
        "benign": ("benign", [0.0] * 99 + [0.3]),
    }
    rows = {r.origin: r for r in leave_one_out(scores)}
    assert rows["a"].threshold == 0.3 and rows["a"].rate == 100.0  # chosen on b and benign: 0.3 keeps FPR at 1%
    assert rows["b"].threshold == 0.8 and rows["b"].rate == 0.0  # chosen on a: 0.8 is enough there
    assert rows["benign"].threshold == 0.3 and rows["benign"].rate == 1.0  # no negatives left: the lowest full TPR


def test_split_is_stable_and_by_package_name() -> None:
    assert package_of(Path("PyYAML-6.0.dist-info/METADATA")) == package_of(Path("pyyaml-6.0.dist-info/RECORD"))
    assert package_of(Path("_yaml/__init__.py")) == "yaml"
    assert package_of(Path("@npmcli/arborist/package.json")) == "@npmcli/arborist"
    assert {split_of(name) for name in ("numpy", "requests", "yaml", "boto3", "rich", "idna")} == {"dev", "held-out"}
    assert split_of("numpy") == split_of("numpy")


def test_chunks_cover_the_text_at_realistic_sizes() -> None:
    text = "".join(f"Paragraph {i}. " + "word " * random.Random(i).randint(5, 400) + "\n\n" for i in range(60))
    pieces = chunks(text, "docs", random.Random(0))
    assert "".join(p for _, p in pieces) == text[: sum(len(p) for _, p in pieces)]
    assert all(text[offset : offset + len(piece)] == piece for offset, piece in pieces)
    assert all(len(piece) <= 2 * MAX_CHARS for _, piece in pieces)
    assert pieces == chunks(text, "docs", random.Random(0))


def test_json_documents_are_valid_json_of_bounded_size() -> None:
    import json

    document = json.dumps({"items": [{"id": i, "name": f"item {i}", "tags": ["a"] * 80} for i in range(200)]})
    parts = json_documents(document, random.Random(0))
    assert parts and all(300 <= len(json.dumps(json.loads(p), separators=(",", ":"))) <= MAX_CHARS for _, p in parts)
