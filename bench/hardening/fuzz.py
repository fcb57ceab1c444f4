"""Fuzz the gateway with schemathesis (`--checks all`) against bench/hardening/openapi.yaml, and count 5xx.

Starts `sentrail serve --dev` (the embedded SmolLM2 model on CPU, an embedded Redis) on a free port with a
temporary home and data folder, waits for `/v1/health/ready`, runs `st run` from the separate virtualenv
bench/.venvs/fuzz (this script installs nothing: see bench/hardening/README.md), then prints a summary:
cases run by operation and status, 5xx (from schemathesis' responses and from the gateway's own
`sentrail_http_requests_total` before/after), failures by check with one example each, and the gateway's
log lines for every 5xx. Generation is kept cheap: the engine caps every answer at 8 tokens (vLLM's
`max_new_tokens`), so the schema can describe `max_tokens` as the gateway takes it.

    .venv/bin/python bench/hardening/fuzz.py [--max-examples 100] [--workers 2] [--max-time 1200] [--seed N]
                                             [--warm-up] [--keep]

Exit status: 0 when no response was a 5xx, 1 otherwise (other checks' failures are reported, not fatal).
Writes bench/results/hardening-fuzz.json (git-ignored) with the figures; `--keep` keeps the temp folder.
"""

from __future__ import annotations

import argparse
import base64
import json
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from devgateway import NAMED_CALL, ROOT, DevGateway

HERE = Path(__file__).resolve().parent
ST = ROOT / "bench" / ".venvs" / "fuzz" / "bin" / "st"
SCHEMA = HERE / "openapi.yaml"
RESULTS = ROOT / "bench" / "results"


def run_schemathesis(gateway: DevGateway, args: argparse.Namespace, report_dir: Path) -> tuple[int, float, str]:
    command = [
        str(ST), "run", str(SCHEMA), "--url", gateway.url,
        "--checks", "all",
        "--max-examples", str(args.max_examples),
        "--workers", str(args.workers),
        "--request-timeout", str(args.request_timeout),
        "--max-response-time", str(args.max_response_time),
        "--max-time", str(args.max_time),
        "--continue-on-failure",
        "--suppress-health-check", "all",
        "--generation-database", "none",
        "--report", "ndjson,json", "--report-dir", str(report_dir),
        "--output-sanitize", "false",
        "--no-color",
    ]  # fmt: skip
    if args.seed is not None:
        command += ["--seed", str(args.seed)]
    print("+", " ".join(command[1:]), flush=True)
    started = time.monotonic()
    out = report_dir / "st-output.txt"
    with out.open("w") as sink:
        process = subprocess.run(command, cwd=report_dir, stdout=sink, stderr=subprocess.STDOUT)
    return process.returncode, time.monotonic() - started, out.read_text(errors="replace")


def warm_up(gateway: DevGateway) -> int:
    """One named tool call before the fuzz: the engine's first structured-output request then picks vLLM's
    xgrammar backend, which the engine keeps for its lifetime (see README: a first request that picks
    `guidance` breaks every later named/required tool call)."""
    request = urllib.request.Request(gateway.url + "/v1/chat/completions", data=json.dumps(NAMED_CALL).encode(),
                                     headers={"Content-Type": "application/json"})  # fmt: skip
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def read_report(report_dir: Path) -> dict[str, Any]:
    """Cases and interactions from the NDJSON events; the run's totals from the JSON report."""
    ndjson = next(report_dir.glob("ndjson-*.ndjson"))
    totals = json.loads(next(report_dir.glob("json-*.json")).read_text())
    statuses: Counter[tuple[str, str]] = Counter()
    by_phase: Counter[str] = Counter()
    modes: Counter[str] = Counter()
    server_errors: list[dict[str, Any]] = []
    failures: dict[str, list[dict[str, Any]]] = defaultdict(list)
    cases = interactions = 0
    for line in ndjson.open():
        event = json.loads(line)
        finished = event.get("ScenarioFinished")
        if not finished:
            continue
        recorder = finished["recorder"]
        label = recorder["label"]
        recorded = recorder.get("cases", {})
        cases += len(recorded)
        for node in recorded.values():
            meta = node["value"].get("meta") or {}
            by_phase[(meta.get("phase") or {}).get("name", "?")] += 1
            modes[(meta.get("generation") or {}).get("mode", "?")] += 1
        for interaction in recorder.get("interactions", {}).values():
            interactions += 1
            response = interaction.get("response") or {}
            status = response.get("status_code")
            request = interaction.get("request") or {}
            operation = label if label != "Stateful tests" else f"{request.get('method')} (stateful)"
            statuses[(operation, str(status) if status is not None else "no response")] += 1
            if status is not None and status >= 500:
                server_errors.append({
                    "operation": label, "method": request.get("method"), "uri": request.get("uri"), "status": status,
                    "body": _text(request.get("body")), "request_id": _header(response, "x-request-id"),
                    "response": _text(response.get("content"))[:500],
                })  # fmt: skip
        for case_id, checks in recorder.get("checks", {}).items():
            for check in checks:
                if check.get("status") != "failure":
                    continue
                detail = (check.get("failure_info") or {}).get("failure") or {}
                interaction = recorder.get("interactions", {}).get(case_id) or {}
                response = interaction.get("response") or {}
                failures[check.get("name", "?")].append({
                    "operation": label, "case": case_id, "title": detail.get("title"), "code": detail.get("code"),
                    "message": detail.get("message"), "status": response.get("status_code"),
                    "error": _error(_text(response.get("content"))),
                    "request": f"{(interaction.get('request') or {}).get('method')} "
                               f"{(interaction.get('request') or {}).get('uri')}",
                    "body": _text((interaction.get("request") or {}).get("body"))[:2000],
                })  # fmt: skip
    return {"cases": cases, "interactions": interactions, "statuses": statuses, "by_phase": by_phase,
            "modes": modes, "server_errors": server_errors, "failures": failures, "totals": totals}  # fmt: skip


def _text(body: Any) -> str:
    """A recorded body: schemathesis keeps it as text or base64 (`{"encoding": ..., "string": ...}`)."""
    if body is None:
        return ""
    if isinstance(body, dict):
        if "string" in body:
            return str(body["string"])
        if "$base64" in body:
            return base64.b64decode(body["$base64"]).decode(errors="replace")
    return body if isinstance(body, str) else json.dumps(body)


def _header(response: dict[str, Any], name: str) -> str | None:
    values = (response.get("headers") or {}).get(name) or [None]
    return values[0]


def _error(body: str) -> str:
    """`code: message` of an OpenAI error body, else the body's start."""
    try:
        error = json.loads(body)["error"]
    except (ValueError, KeyError, TypeError):
        error = None
    if isinstance(error, dict):
        return f"{error.get('code')}: {error.get('message')}"[:200]
    return body[:120]


def five_xx(metrics: Counter[tuple[str, str, str]]) -> Counter[tuple[str, str, str]]:
    return Counter({key: n for key, n in metrics.items() if key[2].startswith("5") and n})


def gateway_errors(gateway: DevGateway, since: int) -> list[str]:
    """Log lines of 5xx requests and of errors (unhandled exceptions, store failures, engine errors)."""
    keep = []
    for line in gateway.log_lines(since):
        level, status = line.get("level"), line.get("status")
        if (isinstance(status, int) and status >= 500) or level in ("error", "critical") or "raw" in line:
            keep.append(json.dumps(line)[:1500])
    return keep


def _kind(check: str, item: dict[str, Any]) -> str:
    """What a failure is about: the invalid component of a negative case, the error of a rejected positive
    one, else the check's own message."""
    message = " ".join((item.get("message") or "").split())
    if check == "negative_data_rejection" and "Invalid component:" in message:
        return "accepted: " + message.split("Invalid component:", 1)[1].strip()[:200]
    if check in ("positive_data_acceptance", "not_a_server_error"):
        return f"{item['title']}: {item['error']}"
    return f"{item['title']}: {message[:200]}"


def summarize(report: dict[str, Any], before: Counter, after: Counter, wall_s: float, errors: list[str]) -> str:
    totals = report["totals"]
    delta = five_xx(after) - five_xx(before)
    lines = [
        f"schemathesis {totals['schemathesis_version']}: {report['cases']} cases "
        f"({report['interactions']} requests) in {wall_s:.0f} s ({report['cases'] / max(wall_s, 1):.1f} cases/s), "
        f"stop reason: {totals['stop_reason']}, seed {totals['seed']}",
        f"  by phase: {dict(report['by_phase'])}; by mode: {dict(report['modes'])}",
        f"  5xx in schemathesis' responses: {len(report['server_errors'])}; "
        f"5xx counted by the gateway (sentrail_http_requests_total, after - before): {sum(delta.values())}",
    ]
    for key, n in sorted(delta.items()):
        lines.append(f"    {key[0]} {key[1]} {key[2]}: {n}")
    lines.append("  responses by operation and status:")
    by_operation: dict[str, dict[str, int]] = defaultdict(dict)
    for (operation, status), n in sorted(report["statuses"].items()):
        by_operation[operation][status] = n
    for operation, statuses in sorted(by_operation.items()):
        lines.append(f"    {operation}: " + ", ".join(f"{s}: {n}" for s, n in statuses.items()))
    failures = report["failures"]
    lines.append(f"  failures by check ({sum(len(v) for v in failures.values())} failing checks; "
                 f"schemathesis: {totals['test_cases']['unique_failures']} unique):")  # fmt: skip
    if not failures:
        lines.append("    none")
    for check, items in sorted(failures.items()):
        lines.append(f"    {check}: {len(items)}")
        kinds = Counter((item["operation"], item["status"], _kind(check, item)) for item in items)
        for (operation, status, kind), n in kinds.most_common():
            example = next(i for i in items if (i["operation"], i["status"], _kind(check, i)) == (operation, status,
                                                                                                 kind))  # fmt: skip
            lines.append(f"      {n} x {operation} -> {status}: {kind}")
            lines.append(f"          e.g. case {example['case']}: {example['request']} {example['body'][:300]}")
    if totals.get("errors"):
        lines.append("  schemathesis errors: " + ", ".join(f"{e['title']}: {e['count']}" for e in totals["errors"]))
    for error in report["server_errors"][:20]:
        lines.append(f"  5xx: {error['method']} {error['uri']} -> {error['status']}: {error['response'][:200]}")
        lines.append(f"       body: {error['body'][:1000]}")
    if errors:
        lines.append(f"  gateway log lines of 5xx responses and errors ({len(errors)}, first 20):")
        lines += [f"    {line}" for line in errors[:20]]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-examples", type=int, default=100, help="fuzzing cases per operation (st -n)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--max-time", type=int, default=1200, help="time budget of the whole st run, seconds")
    parser.add_argument("--request-timeout", type=float, default=60.0)
    parser.add_argument("--max-response-time", type=float, default=10.0, help="slower responses fail a check")
    parser.add_argument("--max-new-tokens", type=int, default=8, help="the engine's cap on every answer")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--warm-up", action="store_true",
                        help="one named tool call first (pins the engine's structured-output backend)")  # fmt: skip
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (logs, reports)")
    args = parser.parse_args()
    if not ST.exists():
        sys.exit(f"{ST} is missing: python3.12 -m venv bench/.venvs/fuzz && bench/.venvs/fuzz/bin/pip install "
                 "schemathesis (see bench/hardening/README.md)")  # fmt: skip

    workdir = Path(tempfile.mkdtemp(prefix="sentrail-fuzz-"))
    report_dir = workdir / "report"
    report_dir.mkdir()
    gateway = DevGateway(workdir, max_new_tokens=args.max_new_tokens)
    try:
        print(f"starting the gateway on {gateway.url} (home and data under {workdir})", flush=True)
        gateway.start()
        if args.warm_up:
            print(f"warm-up named tool call: {warm_up(gateway)}", flush=True)
        log_start = len(gateway.log_lines())
        before = gateway.metrics()
        code, wall_s, output = run_schemathesis(gateway, args, report_dir)
        after = gateway.metrics()
        errors = gateway_errors(gateway, log_start)
    finally:
        gateway.stop()
    print(output[output.find("=== SUMMARY") - 40 :] if "SUMMARY" in output else output[-4000:])
    report = read_report(report_dir)
    summary = summarize(report, before, after, wall_s, errors)
    print(summary)
    RESULTS.mkdir(exist_ok=True)
    delta = five_xx(after) - five_xx(before)
    figures = {
        "cases": report["cases"], "requests": report["interactions"], "wall_s": round(wall_s, 1),
        "st_exit_code": code, "seed": report["totals"]["seed"], "stop_reason": report["totals"]["stop_reason"],
        "warm_up": args.warm_up,
        "five_xx_responses": len(report["server_errors"]), "five_xx_metrics": sum(delta.values()),
        "five_xx_by_route": {" ".join(k): n for k, n in delta.items()},
        "statuses": {f"{op} {status}": n for (op, status), n in report["statuses"].items()},
        "failures": {check: items for check, items in report["failures"].items()},
        "server_errors": report["server_errors"], "gateway_errors": errors, "summary": summary,
    }  # fmt: skip
    name = "hardening-fuzz-warm.json" if args.warm_up else "hardening-fuzz.json"
    (RESULTS / name).write_text(json.dumps(figures, indent=1, default=str) + "\n")
    if args.keep:
        print(f"kept {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return 1 if figures["five_xx_responses"] or figures["five_xx_metrics"] else 0


if __name__ == "__main__":
    sys.exit(main())
