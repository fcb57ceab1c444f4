"""`sentrail policy check | test | explain | replay`: tooling for the security team that owns policies/.

check    validate rails.yaml, tools.yaml, mcp.yaml and tests/*.yaml; every error as file:line (CEL: with its column)
test     run tests/*.yaml against tools.yaml; non-zero exit on any mismatch
explain  which rules matched a proposed call, which one decided, and why
replay   run a candidate policy set over the sessions recorded in Redis; list every decision that changes
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from gateway.settings import Settings
from rails.builtin.nemo import Endpoint
from rails.config import RailsConfigError
from rails.tools.config import ToolPolicy, load_tool_policy
from rails.tools.decide import Decider, PastCall, SessionView, canonical_arguments, parse_arguments
from rails.tools.provenance import ProvenanceView, ValueIndex
from rails.tools.testing import load_cases, run_cases


def add_commands(policy: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    def command(name: str, text: str) -> argparse.ArgumentParser:
        parser = policy.add_parser(name, parents=[common], help=text)
        parser.add_argument("--dir", help="policies directory (default: the configured policies_dir)")
        return parser

    command("check", "validate rails.yaml, tools.yaml, mcp.yaml and tests/*.yaml; errors as file:line")
    command("test", "run the cases under tests/ against tools.yaml")
    explain = command("explain", "show which rules decide a proposed call, and why")
    explain.add_argument("--tool", required=True, help="the tool name")
    explain.add_argument("--args", default="{}", help="the call's arguments as JSON")
    explain.add_argument("--labels", default="", help="comma-separated session labels (e.g. untrusted,pii)")
    explain.add_argument("--user", action="append", default=[], help="a user message of the session (repeatable)")
    explain.add_argument("--result", action="append", default=[], metavar="TOOL=TEXT",
                         help="a tool's result earlier in the session, text or JSON/YAML (repeatable)")  # fmt: skip
    replay = command("replay", "run a candidate policy set over the recorded sessions; list changed decisions")
    replay.add_argument("--candidate", required=True, help="policies directory with the candidate tools.yaml")
    replay.add_argument("--tenant", help="only this tenant's sessions")
    replay.add_argument("--limit", type=int, default=1000, help="sessions per tenant (most recent first)")


async def run(settings: Settings, args: argparse.Namespace) -> int:
    directory = Path(args.dir or settings.policies_dir)
    if args.action == "check":
        return check(directory, settings)
    if args.action == "test":
        return test(directory)
    if args.action == "explain":
        return explain(directory, args)
    return await replay(settings, directory, Path(args.candidate), args.tenant, args.limit)


def check(directory: Path, settings: Settings) -> int:
    from gateway.steps.guard import load_rail_set

    model_ids = {m.id for m in settings.models}  # NeMo rails may only name models this gateway serves

    def resolve(model_id: str) -> Endpoint | None:
        return Endpoint("http://127.0.0.1/v1", model_id) if model_id in model_ids else None

    errors: list[str] = []
    lines: list[str] = []
    path = directory / "rails.yaml"
    try:
        rails = load_rail_set(path, resolve=resolve)
        names = [c.rail.name for stage in rails.pipeline.by_stage.values() for c in stage]
        lines.append(f"{path}: ok, version {rails.version}, {len(names)} rails: {', '.join(names)}")
    except RailsConfigError as exc:
        errors += exc.errors
    tools = directory / "tools.yaml"
    if tools.exists():
        try:
            policy = load_tool_policy(tools)
            count = len({id(r) for rules in policy.exact.values() for _, r in rules} | {id(r) for _, r in policy.globs})
            lines.append(f"{tools}: ok, version {policy.version}, {count} rules, default {policy.file.default}")
        except RailsConfigError as exc:
            errors += exc.errors
    mcp = directory / "mcp.yaml"
    if mcp.exists():
        from gateway.mcp.config import load_mcp_config

        try:
            servers = load_mcp_config(mcp).file.servers
            lines.append(f"{mcp}: ok, {len(servers)} MCP servers: {', '.join(s.name for s in servers) or '-'}")
        except RailsConfigError as exc:
            errors += exc.errors
    for case_file in sorted((directory / "tests").glob("*.yaml")):
        try:
            cases, _ = load_cases(case_file)
            lines.append(f"{case_file}: ok, {len(cases.cases)} cases")
        except RailsConfigError as exc:
            errors += exc.errors
    if errors:
        raise RailsConfigError(errors)
    print(*lines, sep="\n")
    return 0


def test(directory: Path) -> int:
    policy = load_tool_policy(directory / "tools.yaml")
    total, failed = 0, 0
    for case_file in sorted((directory / "tests").glob("*.yaml")):
        checked, failures = run_cases(policy, case_file)
        total += checked
        failed += len(failures)
        for failure in failures:
            got = failure.got
            print(f"FAIL {failure.where}: {failure.case}: expected {failure.expected}, got {got.action}"
                  f" (rule {got.rule or '-'}): {got.reason}")  # fmt: skip
    print(f"{total - failed}/{total} expectations hold (policy version {policy.version})")
    return 1 if failed else 0


def explain(directory: Path, args: argparse.Namespace) -> int:
    policy = load_tool_policy(directory / "tools.yaml")
    labels = {label.strip() for label in args.labels.split(",") if label.strip()}
    view = SessionView("explain", labels=labels)
    index = ValueIndex()
    for text in args.user:
        index.add_message("user", text, 0)
    for number, item in enumerate(args.result, start=1):
        tool, _, text = item.partition("=")
        index.add_tool_result(text, tool, number, policy.field_labels(tool))
        view.labels |= policy.labels_for_tool(tool)
    view.provenance = ProvenanceView(index, untrusted=policy.file.provenance.untrusted)
    decider = Decider(policy, None)
    decision = decider.decide("call_explain", args.tool, args.args, view)
    try:
        parsed = json.loads(args.args or "{}")
    except json.JSONDecodeError:
        parsed = None
    print(f"policy {directory / 'tools.yaml'} version {policy.version}; labels: {', '.join(sorted(labels)) or '-'}")
    for name, value in parsed.items() if isinstance(parsed, dict) else ():
        print(f"  argument {name}: {describe_origins(view.provenance, value)}")
    for result in decider.evaluate("call_explain", args.tool, parsed, view) if parsed is not None else ():
        mark = "matched" if result.matched else "no match"
        shadow = " (shadow)" if result.shadow else ""
        print(f"  rule {result.rule}{shadow}: {mark}; {result.action}; when: {result.when or 'always'}")
    print(f"decision: {decision.action} (rule {decision.rule or '-'}): {decision.reason}")
    return 0


def describe_origins(provenance: ProvenanceView, value: Any) -> str:
    """Where a value came from, in one line: each origin, and whether a rule would call it trusted."""
    origins = provenance.origins(value)
    if not origins:
        return "no origin (made up or computed by the model)"
    parts = []
    for o in origins:
        where = o.source + (f" {o.tool}" if o.tool else "") + (f" {o.field}" if o.field else "")
        tags = [*o.labels, *(["pointed"] if o.pointed else [])]
        parts.append(where + (f" [{', '.join(tags)}]" if tags else ""))
    return "; ".join(parts) + ("; trusted" if provenance.trusted(value) else "; not trusted")


async def replay(settings: Settings, current_dir: Path, candidate_dir: Path, tenant: str | None, limit: int) -> int:
    from gateway.cli.main import connected_redis
    from gateway.stores.sessions import SessionStore

    candidate = load_tool_policy(candidate_dir / "tools.yaml")
    current = load_tool_policy(current_dir / "tools.yaml") if (current_dir / "tools.yaml").exists() else None
    print(f"candidate {candidate_dir / 'tools.yaml'} version {candidate.version}"
          + (f"; current version {current.version}" if current else ""))  # fmt: skip
    changed = sessions = decisions = 0
    async with connected_redis(settings) as redis:
        store = SessionStore(redis, settings.session_ttl_s)
        tenants = [tenant] if tenant else await _tenants(redis)
        for name in tenants:
            for summary in await store.list(name, limit):
                sessions += 1
                state = await store.load(name, summary.id)
                steps = await store.steps(name, summary.id)
                for line in replay_session(candidate, name, summary.id, steps, state.calls if state else {}):
                    decisions += 1
                    if line:
                        changed += 1
                        print(line)
    print(f"{changed} of {decisions} recorded decisions would change, over {sessions} sessions")
    return 0


def replay_session(policy: ToolPolicy, tenant: str, session_id: str, steps: list[dict[str, Any]], calls: dict) -> Any:
    """For each recorded decision: "" when the candidate agrees, else a line saying what changes. The
    session is rebuilt as it happened: labels of a step first, then its calls with their recorded outcomes."""
    view = SessionView(session_id, tenant=tenant)
    index = ValueIndex()
    view.provenance = ProvenanceView(index, untrusted=policy.file.provenance.untrusted)
    decider = Decider(policy, None)  # the request's declared tools are not recorded: schemas are not checked
    pointed: dict[str, bool] = {}  # call id -> the user pointed at its result, by the candidate's `sources`
    for step in steps:
        view.labels |= set(step.get("labels") or ())
        for item in step.get("received") or ():  # as recorded: masked text; a blocked step's is not kept
            call = calls.get(item.get("tool_call_id", ""))
            if item.get("role") != "tool":
                index.add_message(item.get("role", ""), item.get("content", ""), step["step"])
            elif call is not None:
                fields = policy.field_labels(call.name)
                was_pointed = pointed.get(item["tool_call_id"], False)
                index.add_tool_result(item.get("content", ""), call.name, step["step"], fields, was_pointed)
        for recorded in step.get("tool_calls") or ():
            call = calls.get(recorded["call_id"])
            arguments = call.arguments if call is not None else "{}"
            if recorded.get("rule") != "approval":
                new = decider.decide(recorded["call_id"], recorded["tool"], arguments, view)
                same = new.action == recorded["action"]
                yield (
                    ""
                    if same
                    else (
                        f"{tenant}/{session_id} step {step['step']} {recorded['tool']} ({recorded['call_id']}): "
                        f"{recorded['action']} (rule {recorded.get('rule') or '-'}) -> {new.action} "
                        f"(rule {new.rule or '-'}): {new.reason}"
                    )
                )
            view.add(PastCall(recorded["tool"], canonical_arguments(arguments), recorded["action"]))
            if recorded["action"] == "allow" and policy.is_source(recorded["tool"]):
                pointed[recorded["call_id"]] = view.provenance.points(parse_arguments(arguments))
        view.steps += 1


async def _tenants(redis: Any) -> list[str]:
    found = []
    async for key in redis.scan_iter(match="sentrail:tenant:*:sessions", count=1000):
        found.append(key.decode().split(":")[2])
    return sorted(set(found))
