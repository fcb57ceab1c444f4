"""`sentrail audit verify | show SESSION | export | trim`: read the audit log (see gateway/stores/audit.py).

`verify` exits 0 when every chain is intact and sealed, 1 when one is broken (the first bad record named),
3 when none is broken but one is unsealed at its end (written without a key: it cannot tell a rewrite)."""

from __future__ import annotations

import argparse
import datetime
import json
import re
import sys
from pathlib import Path
from typing import Any

from gateway.settings import Settings
from gateway.stores.audit import AuditLog, AuditSealError, AuditTrimRefused, canonical, read_copy

UNSEALED = 3  # verify's exit status when nothing is broken but a chain is not sealed


def add_commands(audit: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    keys = argparse.ArgumentParser(add_help=False)
    keys.add_argument("--keyring", action="append", default=[], metavar="PATH",
                      help="a file or folder of older audit keys (besides audit_key_file, audit_keyring)")  # fmt: skip
    verify = audit.add_parser("verify", parents=[common, keys], help="check every chain; name the first bad record")
    verify.add_argument("--tenant", help="only this tenant's chain (default: every chain)")
    verify.add_argument("--against", action="append", default=[], metavar="FILE",
                        help="an off-box copy (the audit_jsonl file, export or trim output): Redis must still hold "
                             "every sealed record in it")  # fmt: skip
    show = audit.add_parser("show", parents=[common], help="a session's timeline")
    show.add_argument("session_id")
    show.add_argument("--tenant", default="dev", help="the session's tenant (default: dev, the development key)")
    export = audit.add_parser("export", parents=[common], help="write records as JSON lines")
    export.add_argument("--tenant", help="only this tenant's chain (default: every chain)")
    export.add_argument("--out", help="file to write (default: standard output)")
    trim = audit.add_parser("trim", parents=[common, keys], help="export a chain's oldest records, then remove "
                            "them from Redis (a sealed anchor keeps the rest verifiable)")  # fmt: skip
    trim.add_argument("--tenant", help="only this tenant's chain (default: every chain)")
    trim.add_argument("--out", required=True, help="file the trimmed records are appended to (JSON lines)")
    which = trim.add_mutually_exclusive_group()
    which.add_argument("--before", metavar="STREAM_ID", help="trim the records older than this stream id")
    which.add_argument("--keep", type=int, metavar="N", help="keep the newest N records (default: "
                       "audit_retention_records)")  # fmt: skip


async def run(settings: Settings, args: argparse.Namespace) -> int:
    from gateway.cli.main import connected_redis

    async with connected_redis(settings) as redis:
        log = AuditLog.from_settings(redis, settings, serving=False, more_keys=getattr(args, "keyring", ()))
        if args.action == "verify":
            return await verify(log, args)
        if args.action == "trim":
            return await trim(log, settings, args)
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


async def verify(log: AuditLog, args: argparse.Namespace) -> int:
    if not log.keyring.kids:
        print("sentrail: no audit key (audit_key_file, audit_keyring or --keyring): sealed records cannot be "
              "checked and no chain can be reported intact", file=sys.stderr)  # fmt: skip
    try:
        copy, problems, _ = read_copy([Path(p) for p in args.against], log.keyring)
    except OSError as exc:
        print(f"sentrail: cannot read the off-box copy: {exc}", file=sys.stderr)
        return 2
    for problem in problems:
        print(f"off-box copy: BROKEN: {problem}")
    tenants = [args.tenant] if args.tenant else sorted({*await log.tenants(), *copy})
    broken, unsealed = bool(problems), False
    for tenant in tenants:
        verdict = await log.verify(tenant, copy.get(tenant))
        print(f"{tenant}: {'ok' if verdict.sealed else 'UNSEALED' if verdict.ok else 'BROKEN'}: {verdict.message}")
        broken |= not verdict.ok
        unsealed |= verdict.ok and not verdict.sealed
    if not tenants:
        print("no audit records")
    return 1 if broken else UNSEALED if unsealed else 0


async def trim(log: AuditLog, settings: Settings, args: argparse.Namespace) -> int:
    keep = args.keep if args.keep is not None else None if args.before else settings.audit_retention_records or None
    if args.before is None and keep is None:
        print("sentrail: say which records to trim: --before STREAM_ID, --keep N, or set audit_retention_records",
              file=sys.stderr)  # fmt: skip
        return 2
    if (keep is not None and keep < 0) or (args.before and not re.fullmatch(r"\d+(-\d+)?", args.before)):
        print("sentrail: --keep takes a count, --before a stream id (e.g. 1700000000000-0)", file=sys.stderr)
        return 2
    failed = 0
    for tenant in [args.tenant] if args.tenant else await log.tenants():
        try:
            trimmed = await log.trim(tenant, Path(args.out), before=args.before, keep=keep)
        except (AuditSealError, AuditTrimRefused) as exc:
            print(f"{tenant}: not trimmed: {exc}", file=sys.stderr)
            failed += 1
            continue
        print(f"{tenant}: trimmed {trimmed} records" + (f" (exported to {args.out})" if trimmed else ""))
    return 1 if failed else 0


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
    hidden = ("seq", "ts", "prev", "hash", "kid", "chain")
    return f"{head} {json.dumps({k: v for k, v in record.items() if k not in hidden})}"
