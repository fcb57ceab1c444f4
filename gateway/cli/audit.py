"""`sentrail audit verify | show SESSION | export`: read the audit log (see gateway/stores/audit.py)."""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from pathlib import Path
from typing import Any

from gateway.settings import Settings
from gateway.stores.audit import AuditLog, canonical


def add_commands(audit: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    verify = audit.add_parser("verify", parents=[common], help="check every chain; name the first bad record")
    verify.add_argument("--tenant", help="only this tenant's chain (default: every chain)")
    show = audit.add_parser("show", parents=[common], help="a session's timeline")
    show.add_argument("session_id")
    show.add_argument("--tenant", default="dev", help="the session's tenant (default: dev, the development key)")
    export = audit.add_parser("export", parents=[common], help="write records as JSON lines")
    export.add_argument("--tenant", help="only this tenant's chain (default: every chain)")
    export.add_argument("--out", help="file to write (default: standard output)")


async def run(settings: Settings, args: argparse.Namespace) -> int:
    from gateway.cli.main import connected_redis

    async with connected_redis(settings) as redis:
        log = AuditLog(redis)
        if args.action == "verify":
            tenants = [args.tenant] if args.tenant else await log.tenants()
            bad = 0
            for tenant in tenants:
                verdict = await log.verify(tenant)
                print(f"{tenant}: {'ok' if verdict.ok else 'BROKEN'}: {verdict.message}")
                bad += not verdict.ok
            if not tenants:
                print("no audit records")
            return 1 if bad else 0
        if args.action == "show":
            found = 0
            async for _, record in log.records(args.tenant):
                if record is not None and record.get("session_id") == args.session_id:
                    found += 1
                    print(timeline_line(record))
            if not found:
                print(f"sentrail: no audit records for session {args.session_id!r} of tenant {args.tenant!r}",
                      file=sys.stderr)  # fmt: skip
                return 1
            return 0
        out = Path(args.out).open("wb") if args.out else sys.stdout.buffer  # noqa: ASYNC230 - a one-task CLI
        try:
            for tenant in [args.tenant] if args.tenant else await log.tenants():
                async for entry_id, record in log.records(tenant):
                    out.write(canonical({"stream_id": entry_id, **(record or {"unreadable": True})}) + b"\n")
        finally:
            if args.out:
                out.close()
        return 0


def timeline_line(record: dict[str, Any]) -> str:
    when = datetime.datetime.fromtimestamp(record["ts"], datetime.UTC).strftime("%Y-%m-%d %H:%M:%S")
    kind = record.get("type", "?")
    head = f"{when} #{record['seq']:<5} {kind:<10}"
    if kind == "request":
        return f"{head} {record.get('api')} {record.get('model')} key {record.get('key_id')}, " \
               f"{record.get('received')} new messages, flags {record.get('flags') or '-'}, " \
               f"labels added {record.get('labels_added') or '-'} (request {record.get('request_id')})"  # fmt: skip
    if kind == "rail":
        return (
            f"{head} {record['rail']} ({record['stage']}): {record['action']}"
            f"{' [shadow]' if record.get('shadow') else ''}: {record['reason']} (rails {record['rails_version']})"
        )
    if kind == "tool_call":
        ticket = f", ticket {record['ticket']}" if record.get("ticket") else ""
        return (
            f"{head} {record['tool']} ({record['call_id']}): {record['action']} by rule "
            f"{record.get('rule') or '-'}: {record['reason']} (policy {record['policy_version']}{ticket})"
        )
    if kind == "result":
        return (
            f"{head} finish {record.get('finish_reason')}, calls {record.get('tool_calls') or '-'}, "
            f"usage {json.dumps(record.get('usage'))}"
        )
    if kind == "approval":
        return (
            f"{head} ticket {record['ticket']} {record['status']} by {record['by']} for {record['tool']} "
            f"({record['call_id']})"
        )
    return f"{head} {json.dumps({k: v for k, v in record.items() if k not in ('seq', 'ts', 'prev', 'hash')})}"
