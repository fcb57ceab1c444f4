"""Markdown report (stdlib only) and PNG plot (matplotlib; run with bench/.venvs/plot) of a gateway benchmark run.

bench/.venvs/plot/bin/python bench/gateways/report.py bench/results/gateways.json bench/results/gateways.png [10]
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path


def fmt(value: float | None, digits: int = 2) -> str:
    return "—" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def direct_point(results: dict, mode: str, rate: float) -> dict | None:
    return next((p for p in results["direct"] if p["mode"] == mode and p["rate"] == rate), None)


def added(point: dict, base: dict | None, key: str) -> float | None:
    if base is None or math.isnan(point[key]) or math.isnan(base[key]):
        return None
    return point[key] - base[key]


def sustained(results: dict, points: list[dict], mode: str, bound_ms: float) -> str:
    """The highest offered rate such that it and every lower rate ran with no errors, achieved >= 95% of
    the offered rate and an added p99 (latency, and TTFT on streams) within `bound_ms`."""
    best = None
    for point in sorted((p for p in points if p["mode"] == mode and p["rate"]), key=lambda p: p["rate"]):
        base = direct_point(results, mode, point["rate"])
        extra = added(point, base, "p99_ms")
        ok = point["errors"] == 0 and point["achieved_rps"] >= 0.95 * point["offered_rps"]
        ok = ok and extra is not None and extra <= bound_ms
        if not ok:
            return f"{best or '< ' + str(point['rate'])}"
        best = point["rate"]
    return f"≥ {best}" if best else "—"


def p99_at(results: dict, points: list[dict], rate: int) -> str:
    """Added p99 (ms) at one open-loop rate, JSON / stream; "over" where that point was overloaded."""
    texts = []
    for mode in ("json", "stream"):
        point = next((p for p in points if p["mode"] == mode and p["rate"] == rate), None)
        if point is None:
            texts.append("—")
        elif point["errors"] or point["achieved_rps"] < 0.95 * point["offered_rps"]:
            texts.append("over")
        else:
            texts.append(fmt(added(point, direct_point(results, mode, rate), "p99_ms")))
    return " / ".join(texts)


def reference_cpu(points: list[dict]) -> tuple[float | None, float | None]:
    """CPU s per 1,000 requests at the lowest open-loop rate of 300/s or more that was not overloaded (JSON)."""
    candidates = [p for p in points if p["mode"] == "json" and p["rate"] >= 300 and p["errors"] == 0]
    if not candidates:
        candidates = [p for p in points if p["mode"] == "json" and p["rate"] and p["errors"] == 0]
    if not candidates:  # overloaded at every rate: the closed-loop c=1 figure
        candidates = [p for p in points if p["mode"] == "json" and not p["rate"] and p["errors"] == 0]
    if not candidates:
        return None, None
    point = min(candidates, key=lambda p: p["rate"])
    return point["cpu_s_per_1k"], point["rate"] or "c=1"


def markdown(results: dict, bound_ms: float, png_name: str) -> str:
    args = results["args"]
    lines = [
        "# Added latency: Sentrail vs LiteLLM proxy vs NeMo Guardrails server (and a bare-proxy floor)",
        "",
        f"Run {results['started']} on {results['machine']}; {results['pinning']}.",
        f"Command: `{' '.join(results['argv'])}`. Open-loop points {args['duration']} s each at "
        f"{', '.join(map(str, args['rates']))} req/s; concurrency-1 points {args['c1_duration']} s; "
        f"stub answers {args['chunks']} content chunks"
        + (f", {args['chunk_interval_ms']:g} ms apart in streams" if args.get("chunk_interval_ms") else "")
        + ". Added = gateway percentile - direct-to-stub percentile "
        "(same rate, same mode, same run); latency of open-loop points counts from the scheduled send time.",
        "",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in results["versions"].items()) + ".",
        "",
        "Settings: no authentication anywhere (Sentrail `dev_mode`, LiteLLM without a master key, NeMo has "
        "none); Sentrail with its embedded Redis (same core, over a Unix socket, counted in its CPU and RSS), "
        "every step recorded in its session and hash-chained audit log and traced (OpenTelemetry SDK, no "
        "exporter), `max_concurrency: 256` and `max_waiting: 1024` so that queueing shows as latency as with "
        "the peers (its defaults would answer 429 sooner); NeMo on loopback with logging at WARNING (its stock "
        "server logs each request at INFO). The floor is `floor.py`: uvicorn + a raw ASGI app + Sentrail's "
        "HTTP client, no framework and no checks, the least a Python gateway on this stack can cost.",
        "",
        f"## Summary (sustained: no errors, ≥ 95% of the offered rate achieved, added p99 ≤ {bound_ms:g} ms)",
        "",
        "| gateway | configuration | checks | c=1 added p50 / p99 ms | c=1 stream added TTFT p50 / p99 ms | "
        "added p99 ms at 500/s JSON / stream | sustained req/s JSON | sustained req/s stream | CPU s / 1k req | "
        "peak RSS MB |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for entry in results["gateways"]:
        if "failed" in entry or "points" not in entry:
            lines.append(f"| {entry['product']} | {entry['config']} | FAILED: {entry.get('failed', '?')} "
                         "| | | | | | | |")  # fmt: skip
            continue
        points = entry["points"]
        c1 = next((p for p in points if p["mode"] == "json" and not p["rate"]), None)
        c1s = next((p for p in points if p["mode"] == "stream" and not p["rate"]), None)
        c1_text = "—"
        if c1:
            base = direct_point(results, "json", 0)
            c1_text = f"{fmt(added(c1, base, 'p50_ms'))} / {fmt(added(c1, base, 'p99_ms'))}"
        c1s_text = "—"
        if c1s:
            base = direct_point(results, "stream", 0)
            c1s_text = f"{fmt(added(c1s, base, 'ttft_p50_ms'))} / {fmt(added(c1s, base, 'ttft_p99_ms'))}"
        cpu, cpu_rate = reference_cpu(points)
        where = "" if cpu_rate is None else f" (at {cpu_rate})" if cpu_rate == "c=1" else f" (at {cpu_rate}/s)"
        sanity = entry.get("sanity", {})
        checks = [f"{sanity.get('upstream_calls_per_request', '?'):g} upstream call/req"]
        if not (sanity.get("json_ok") and sanity.get("stream_ok")):
            checks.append("answer NOT the stub's")
        checks.append("blocks the rail's prompt" if sanity.get("blocks_rail_prompt") else "passes the rail's prompt")
        if "stream_content_deltas" in sanity:
            checks.append(f"{sanity['stream_content_deltas']} content deltas per stream")
        if "output_stream_leaks" in sanity:
            checks.append("streamed output rail LEAKS" if sanity["output_stream_leaks"] else "streamed output blocked")
        lines.append(
            f"| {entry['product']} | {entry['config']} | {'; '.join(checks)} | {c1_text} | {c1s_text} | "
            f"{p99_at(results, points, 500)} | {sustained(results, points, 'json', bound_ms)} | "
            f"{sustained(results, points, 'stream', bound_ms)} | "
            f"{fmt(cpu)}{where} | {fmt(max(p['rss_mb'] for p in points), 0)} |"
        )
    if not args.get("no_plot"):
        lines += ["", f"![added p99 latency versus offered rate]({png_name})"]
    lines += [
        "",
        "## Every point",
        "",
        "c=1 = closed loop, concurrency 1. Latencies in ms; + columns are added over direct. CPU s/1k req: CPU "
        "seconds of the gateway's whole process tree (children included) per 1,000 answered requests; CPU util: "
        "cores it used during the point (1.0 = its whole core). A point with errors or an achieved rate under the "
        "offered one is overloaded: its latencies are mostly queueing and client timeouts (10 s), and higher rates "
        "were not run.",
        "",
        "| target | mode | offered/s | achieved/s | errors | p50 | p90 | p99 | +p50 | +p90 | +p99 | "
        "+TTFT p50 | +TTFT p99 | CPU s/1k req | CPU util | RSS MB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    targets = [("direct (stub)", results["direct"])]
    targets += [(entry["key"], entry["points"]) for entry in results["gateways"] if "points" in entry]
    for name, points in targets:
        for p in points:
            base = direct_point(results, p["mode"], p["rate"])
            extras = [added(p, base, k) for k in ("p50_ms", "p90_ms", "p99_ms")]
            ttft = [added(p, base, k) if p["mode"] == "stream" else None for k in ("ttft_p50_ms", "ttft_p99_ms")]
            lines.append(
                f"| {name} | {p['mode']} | {p['rate'] or 'c=1'} | {p['achieved_rps']:.0f} | {p['errors']} | "
                f"{fmt(p['p50_ms'])} | {fmt(p['p90_ms'])} | {fmt(p['p99_ms'])} | "
                + " | ".join(fmt(x) for x in extras + ttft)
                + f" | {fmt(p.get('cpu_s_per_1k'))} | {fmt(p.get('cpu_util'))} | {fmt(p.get('rss_mb'), 0)} |"
            )
    lines += ["", "## Exact command lines and environment", "", f"- stub: `{results['stub']}`"]
    for entry in results["gateways"]:
        env = " ".join(f"{k}={v}" for k, v in entry["env"].items())
        lines.append(f"- {entry['key']}: `{env + ' ' if env else ''}{entry['command']}`")
        if entry.get("startup_s"):
            lines.append(f"  (ready in {entry['startup_s']:.1f} s, idle RSS {entry.get('idle_rss_mb', 0):.0f} MB; "
                         f"rail prompt answered: `{entry['sanity']['block_response'][:100]}`)")  # fmt: skip
        if "output_block_response" in entry.get("sanity", {}):
            lines.append(f"  (streamed answer to the output rail's test prompt: "
                         f"`{entry['sanity']['output_block_response'].strip()[:160]}`)")  # fmt: skip
        if entry.get("config_file"):
            lines += ["", "  ```yaml", *("  " + line for line in entry["config_file"].splitlines()), "  ```", ""]
    lines += ["", "Config files are written to a temporary folder by `bench/gateways/gateways.py` (see its code)."]
    return "\n".join(lines) + "\n"


def plot(results: dict, png: Path, bound_ms: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 6), sharey=True)
    for axis, mode in zip(axes, ("json", "stream"), strict=True):
        for entry in results["gateways"]:
            pts = [p for p in entry.get("points", []) if p["mode"] == mode and p["rate"]]
            pts.sort(key=lambda p: p["rate"])
            xs, ys = [], []
            for p in pts:
                extra = added(p, direct_point(results, mode, p["rate"]), "p99_ms")
                if extra is not None:
                    xs.append(p["rate"])
                    ys.append(max(extra, 0.01))  # log scale: a (noisy) negative difference is drawn at 0.01 ms
            if xs:
                axis.plot(xs, ys, marker="o", label=f"{entry['product']}: {entry['config']}")
        axis.axhline(bound_ms, color="grey", linestyle="--", linewidth=1)
        axis.set_xscale("log")
        axis.set_yscale("log")
        axis.set_xlabel("offered request rate (req/s, open loop)")
        axis.set_title(f"{'streaming' if mode == 'stream' else 'non-streaming'}: added p99 latency")
        axis.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("added p99 latency vs direct (ms)")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=7, loc="lower center", ncol=3)
    fig.suptitle(f"Latency added by each gateway over a fast stub upstream ({results['pinning']})", fontsize=9)
    fig.tight_layout(rect=(0, 0.12, 1, 1))
    fig.savefig(png, dpi=120)


if __name__ == "__main__":
    source, target = Path(sys.argv[1]), Path(sys.argv[2])
    plot(json.loads(source.read_text()), target, float(sys.argv[3]) if len(sys.argv) > 3 else 10.0)
