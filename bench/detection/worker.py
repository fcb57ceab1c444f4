"""Runs one revision's rails over a list of texts (run in a subprocess: the revision's tree goes first on sys.path).

    python bench/detection/worker.py CODE_DIR RAILS_YAML ITEMS_JSON OUT_JSON

ITEMS_JSON: [[stage, text], ...]. OUT_JSON: {"results": [...], "error": null}, one result per item:
`blocked` ("rail: reason" of the enforced block, or null), `labelled` (rails whose `action: label` fired),
`masked` (rails that rewrote the text), `score` (the stage's injection rail's score, threshold not applied; null
when the stage has none) and `ms`. Only the standard library and the revision's `rails` package are imported.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
import traceback
from pathlib import Path
from typing import Any


def _score_function(rail: Any) -> Any:
    """The injection rail's raw score, whatever the revision calls it: `rail.score(text)`, or the module's
    `score(text, rail.signals)`."""
    if callable(getattr(rail, "score", None)):
        return lambda text: rail.score(text)
    module = sys.modules.get(type(rail).__module__)
    if module is not None and callable(getattr(module, "score", None)) and hasattr(rail, "signals"):
        return lambda text: module.score(text, rail.signals)
    return None


async def evaluate(rails_yaml: Path, items: list[list[str]]) -> list[dict[str, Any]]:
    from rails.base import Stage
    from rails.config import load_rails
    from rails.pipeline import RailPipeline

    _, configured = load_rails(rails_yaml)
    pipeline = RailPipeline(configured)
    scorers = {}
    for c in configured:
        if type(c.rail).__name__ == "InjectionRail" and not c.shadow:
            scorers.setdefault(c.rail.stage, _score_function(c.rail))
    results = []
    try:
        for stage_name, text in items:
            stage = Stage(stage_name)
            started = time.perf_counter()
            result = await pipeline.run(stage, text)
            ms = (time.perf_counter() - started) * 1000
            decisions = [d for d in result.decisions if not d.shadow]
            blocked = f"{result.blocked.rail}: {result.blocked.reason}" if result.blocked is not None else None
            scorer = scorers.get(stage)
            value = scorer(text) if scorer is not None else None
            results.append({
                "blocked": blocked,
                "labelled": [f"{d.rail}: {d.reason}" for d in decisions if d.action == "label"],
                "masked": sorted({d.rail for d in decisions if d.action == "modify"}),
                "score": (value[0] if isinstance(value, tuple) else value) if value is not None else None,
                "ms": ms,
            })  # fmt: skip
    finally:
        await pipeline.aclose()
    return results


def main() -> None:
    code, rails_yaml, items_path, out_path = (Path(a) for a in sys.argv[1:5])
    sys.path.insert(0, str(code))
    sys.modules.pop("rails", None)
    items = json.loads(items_path.read_text())
    try:
        out: dict[str, Any] = {"results": asyncio.run(evaluate(rails_yaml, items)), "error": None}
    except Exception:
        out = {"results": [], "error": traceback.format_exc()}
    import rails

    out["rails_from"] = str(Path(rails.__file__).resolve().parent)
    out_path.write_text(json.dumps(out))


if __name__ == "__main__":
    main()
