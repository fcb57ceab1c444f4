"""Faults under load: kill -9 of the embedded Redis, then of the gateway; nothing acknowledged may be lost,
`sentrail audit verify` must pass after both, and must fail on a chain rewritten with full Redis access.

Starts `sentrail serve --dev` (embedded Redis, the embedded model on CPU, every answer capped at 8 tokens)
with a temporary home and data folder, and drives it with `--clients` concurrent agents, each running
multi-step sessions (`X-Session-Id`, the whole history resent each step, max_tokens 8). Every 200 is an
acknowledged step: session id, step number, request id, completion id and text are recorded. Then:

  1. load;
  2. kill -9 the embedded redis-server (the gateway's child) under load, keep the load on, and watch whether
     the gateway brings its store back (readiness `store`, a new redis-server child);
  3. if it did not: restart the gateway (SIGTERM, start) on the same data folder, as an operator would;
  4. load, and kill -9 the gateway process under load (its children get SIGTERM: see engines/process.py);
  5. start it again on the same data folder, load again (the sessions go on from where they were);
  6. check every acknowledged step is in `GET /v1/sessions/{id}` (same request id, same order, same text),
     and run `sentrail audit verify` (exit 0 expected);
  7. tamper with the `dev` tenant's chain in Redis without the audit key: edit one record's field and
     (a) re-seal it and every later record and the head with a wrong key, (b) rewrite them unsealed (plain
     SHA-256, no `kid`), (c) rewrite the whole chain unsealed; `audit verify` after each (restoring the
     original chain in between): exit 1 naming the edited record for (a) and (b); (c) is the documented
     limit (exit 3: "unsealed", never 0).

    .venv/bin/python bench/hardening/faults.py [--clients 8] [--steps 6] [--phase-s 20] [--keep]

Exit status 0 when nothing acknowledged was lost and every audit expectation held, else 1. Writes
bench/results/hardening-faults.json (git-ignored).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import hmac
import json
import os
import secrets
import shutil
import signal
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import redis

sys.path.insert(0, str(Path(__file__).resolve().parent))

from devgateway import MODEL, ROOT, DevGateway, wait_for

sys.path.insert(0, str(ROOT))
from gateway.stores.audit_seal import Head, canonical, plain_hash

RESULTS = ROOT / "bench" / "results"
WORDS = ["apple", "river", "stone", "cloud", "lamp", "garden", "violin", "tiger", "window", "candle", "harbor"]


@dataclass
class Ack:
    session: str
    step: int  # 1-based, this session's acknowledged steps so far
    request_id: str
    completion_id: str
    content: str
    phase: str
    at: float


@dataclass
class Load:
    """The agents' shared record: acknowledged steps, failures by phase and kind."""

    phase: str = "start"
    acks: list[Ack] = field(default_factory=list)
    failures: dict[str, dict[str, int]] = field(default_factory=dict)
    failure_examples: dict[str, str] = field(default_factory=dict)
    stop: bool = False

    def fail(self, kind: str, example: str) -> None:
        counts = self.failures.setdefault(self.phase, {})
        counts[kind] = counts.get(kind, 0) + 1
        self.failure_examples.setdefault(f"{self.phase}: {kind}", example[:300])

    def acked(self, phase: str | None = None) -> int:
        return sum(1 for a in self.acks if phase is None or a.phase == phase)


async def agent(index: int, url: str, load: Load, steps: int) -> None:
    """Sessions of `steps` steps, one after the other; a failed step is retried (same history)."""
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    async with httpx.AsyncClient(base_url=url, timeout=30, limits=limits) as client:
        number = 0
        while not load.stop:
            number += 1
            session = f"fault-{index}-{number}-{secrets.token_hex(3)}"
            history: list[dict[str, Any]] = [{"role": "system", "content": "You are a terse assistant."}]
            step = 0
            while step < steps and not load.stop:
                word = WORDS[(index + step + number) % len(WORDS)]
                messages = [*history, {"role": "user", "content": f"Step {step + 1}: say one word about {word}."}]
                body = {"model": MODEL, "messages": messages, "max_tokens": 8, "temperature": 0}
                try:
                    response = await client.post("/v1/chat/completions", json=body, headers={"X-Session-Id": session})
                except httpx.HTTPError as exc:
                    load.fail(type(exc).__name__, f"{session} step {step + 1}: {exc!r}")
                    await asyncio.sleep(0.5)
                    continue
                if response.status_code != 200:
                    try:
                        code = response.json()["error"]["code"]
                    except (ValueError, KeyError, TypeError):
                        code = "?"
                    load.fail(f"{response.status_code} {code}", f"{session} step {step + 1}: {response.text}")
                    await asyncio.sleep(0.5)
                    continue
                data = response.json()
                content = data["choices"][0]["message"]["content"] or ""
                step += 1
                load.acks.append(Ack(session, step, response.headers["x-request-id"], data["id"], content,
                                     load.phase, time.time()))  # fmt: skip
                history = [*messages, {"role": "assistant", "content": content}]


class LoadThread:
    """The agents on their own event loop, so that the main thread can kill and restart processes."""

    def __init__(self, url: str, clients: int, steps: int) -> None:
        self.load = Load()
        self.thread = threading.Thread(target=self._run, args=(url, clients, steps), daemon=True)

    def _run(self, url: str, clients: int, steps: int) -> None:
        async def main() -> None:
            await asyncio.gather(*(agent(i, url, self.load, steps) for i in range(clients)))

        asyncio.run(main())

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.load.stop = True
        self.thread.join(timeout=60)


def phase(load: Load, name: str, seconds: float) -> dict[str, Any]:
    load.phase = name
    before = load.acked()
    time.sleep(seconds)
    return {"phase": name, "seconds": seconds, "acked": load.acked() - before, "failures": load.failures.get(name, {})}


def pids_alive(pids: list[int]) -> list[int]:
    alive = []
    for pid in pids:
        try:
            os.kill(pid, 0)
            stat = Path(f"/proc/{pid}/stat").read_text()
            if stat.rsplit(")", 1)[1].split()[0] != "Z":
                alive.append(pid)
        except (OSError, IndexError):
            pass
    return alive


def ready_state(gateway: DevGateway) -> dict[str, Any]:
    try:
        status, body = gateway.get("/v1/health/ready", timeout_s=5)
        return {"status": status, **json.loads(body)}
    except (OSError, ValueError) as exc:
        return {"status": None, "error": repr(exc)}


# ---- checks ------------------------------------------------------------------------------------------


def check_sessions(gateway: DevGateway, acks: list[Ack]) -> dict[str, Any]:
    """Every acknowledged step must be in its session, in order, with the text the client got."""
    by_session: dict[str, list[Ack]] = {}
    for ack in acks:
        by_session.setdefault(ack.session, []).append(ack)
    lost, out_of_order, changed, extra, missing_sessions = [], [], [], 0, []
    with httpx.Client(base_url=gateway.url, timeout=30) as client:
        for session, items in by_session.items():
            response = client.get(f"/v1/sessions/{session}")
            if response.status_code != 200:
                missing_sessions.append(session)
                lost += [asdict(a) for a in items]
                continue
            steps = response.json()["steps"]
            position = {s["request_id"]: (i, s) for i, s in enumerate(steps)}
            last = -1
            for ack in items:
                found = position.get(ack.request_id)
                if found is None:
                    lost.append(asdict(ack))
                    continue
                index, step = found
                if index <= last:
                    out_of_order.append(asdict(ack))
                last = index
                if (step.get("emitted") or {}).get("content", "") != ack.content:
                    changed.append({**asdict(ack), "recorded": (step.get("emitted") or {}).get("content")})
            extra += len(steps) - sum(1 for a in items if a.request_id in position)
    return {"sessions": len(by_session), "acked_steps": len(acks), "lost": lost, "out_of_order": out_of_order,
            "changed": changed, "recorded_not_acked": extra, "missing_sessions": missing_sessions}  # fmt: skip


def audit_verify(gateway: DevGateway) -> dict[str, Any]:
    done = gateway.cli("audit", "verify")
    return {"exit": done.returncode, "stdout": done.stdout.strip(), "stderr": done.stderr.strip()[-2000:]}


# ---- tampering (an attacker with full Redis access and no audit key) -----------------------------------


def redis_client(gateway: DevGateway) -> redis.Redis:
    url = (gateway.data_dir / "redis" / "url").read_text().strip()
    return redis.Redis.from_url(url)


def stream_key(tenant: str) -> str:
    return f"sentrail:audit:{{{tenant}}}:stream"


def head_key(tenant: str) -> str:
    return f"sentrail:audit:{{{tenant}}}:head"


def read_chain(r: redis.Redis, tenant: str) -> tuple[list[tuple[str, dict[str, Any]]], bytes]:
    entries = [(eid.decode(), json.loads(fields[b"r"])) for eid, fields in r.xrange(stream_key(tenant))]
    return entries, r.get(head_key(tenant)) or b""


def write_chain(r: redis.Redis, tenant: str, entries: list[tuple[str, dict[str, Any]]], head: bytes) -> None:
    """Replace the stream with `entries` (their own stream ids) and set the head, in one transaction."""
    with r.pipeline(transaction=True) as pipe:
        pipe.delete(stream_key(tenant))
        for entry_id, record in entries:
            pipe.xadd(stream_key(tenant), {"r": canonical(record)}, id=entry_id)
        pipe.set(head_key(tenant), head)
        pipe.execute()


def tamper(entries: list[tuple[str, dict[str, Any]]], at: int, how: str) -> tuple[list, bytes]:
    """Edit record `at` (finish_reason of a result, else a field every record has) and rewrite every record
    from it on (from the start, for `all-unsealed`), as someone who can write to Redis but has no key."""
    wrong_key = secrets.token_bytes(32)
    start = 0 if how == "all-unsealed" else at
    out = [(eid, dict(rec)) for eid, rec in entries]
    _, target = out[at]
    if target.get("type") == "result":
        target["finish_reason"] = "stop" if target.get("finish_reason") != "stop" else "length"
    else:
        target["ts"] = target["ts"] - 3600
    prev = out[start - 1][1]["hash"] if start else "0" * 64
    for _, record in out[start:]:
        record["prev"] = prev
        record.pop("hash", None)
        if how == "wrong-key":
            record["hash"] = hmac.new(wrong_key, canonical(record), hashlib.sha256).hexdigest()
        else:  # unsealed: what anyone can compute
            record.pop("kid", None)
            record.pop("chain", None)
            record["hash"] = plain_hash(record)
        prev = record["hash"]
    last = out[-1][1]
    if how == "wrong-key":
        tag = hmac.new(wrong_key, Head.message(last["tenant"], last["seq"], last["hash"]), hashlib.sha256).hexdigest()
        head = f"{last['seq']}:{last['hash']}:{last['kid']}:{tag}".encode()
    else:
        head = f"{last['seq']}:{last['hash']}".encode()
    return out, head


def tamper_checks(gateway: DevGateway, tenant: str = "dev") -> list[dict[str, Any]]:
    r = redis_client(gateway)
    entries, head = read_chain(r, tenant)
    results = []
    results_ids = [i for i, (_, rec) in enumerate(entries) if rec.get("type") == "result"]
    at = results_ids[len(results_ids) // 2] if results_ids else len(entries) // 2
    for how in ("wrong-key", "unsealed-from-edit", "all-unsealed"):
        forged, forged_head = tamper(entries, at, how)
        write_chain(r, tenant, forged, forged_head)
        verdict = audit_verify(gateway)
        edited_id = entries[at][0]
        named = edited_id in verdict["stdout"]
        expected_exit = 3 if how == "all-unsealed" else 1
        results.append({"how": how, "edited_record": edited_id, "edited_seq": entries[at][1]["seq"],
                        "chain_records": len(entries), "exit": verdict["exit"], "expected_exit": expected_exit,
                        "names_edited_record": named, "verify": verdict["stdout"],
                        "ok": verdict["exit"] == expected_exit and (named or how == "all-unsealed")})  # fmt: skip
        write_chain(r, tenant, entries, head)  # restore the original chain
        restored = audit_verify(gateway)
        results[-1]["restored_exit"] = restored["exit"]
        results[-1]["ok"] = results[-1]["ok"] and restored["exit"] == 0
    r.close()
    return results


# ---- the run -----------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--steps", type=int, default=6, help="steps per session")
    parser.add_argument("--phase-s", type=float, default=20.0, help="seconds of load per phase")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (logs, data)")
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="sentrail-faults-"))
    gateway = DevGateway(workdir, max_new_tokens=8)
    report: dict[str, Any] = {"clients": args.clients, "steps_per_session": args.steps, "phase_s": args.phase_s,
                              "phases": [], "events": []}  # fmt: skip
    load_thread = None

    def event(what: str, **data: Any) -> None:
        data = {"t": round(time.time(), 3), "event": what, **data}
        report["events"].append(data)
        print(json.dumps(data), flush=True)

    try:
        print(f"starting the gateway on {gateway.url} (home and data under {workdir})", flush=True)
        gateway.start()
        event("gateway_started", pid=gateway.process.pid, children=gateway.children())
        load_thread = LoadThread(gateway.url, args.clients, args.steps)
        load_thread.start()
        load = load_thread.load
        report["phases"].append(phase(load, "1 load", args.phase_s))

        # ---- (a) kill -9 the embedded Redis under load
        redis_pid = gateway.redis_pid()
        os.kill(redis_pid, signal.SIGKILL)
        event("redis_killed", pid=redis_pid)
        load.phase = "2 after redis kill -9"
        started, acked_before, came_back, states = time.monotonic(), load.acked(), None, []
        while time.monotonic() - started < max(args.phase_s, 30):
            state = ready_state(gateway)
            children = gateway.children()
            new_redis = [pid for pid, cmd in children.items() if "redis-server" in cmd]
            states.append({"t": round(time.monotonic() - started, 1), "ready": state.get("status"),
                           "store": state.get("store"), "redis_children": new_redis})  # fmt: skip
            if state.get("store") and came_back is None:
                came_back = round(time.monotonic() - started, 1)
            time.sleep(1)
        report["phases"].append({"phase": load.phase, "seconds": round(time.monotonic() - started, 1),
                                 "acked": load.acked() - acked_before, "failures": load.failures.get(load.phase, {}),
                                 "store_back_after_s": came_back, "readiness": states[::5] + states[-1:]})  # fmt: skip
        event("after_redis_kill", store_back_after_s=came_back, last=states[-1])
        if came_back is None:
            load.phase = "3 operator restart"
            gateway.stop()
            event("gateway_stopped", reason="the store did not come back")
            gateway.start()
            event("gateway_started", pid=gateway.process.pid, children=gateway.children())
        report["phases"].append(phase(load, "4 load", args.phase_s))

        # ---- (b) kill -9 the gateway under load, then start it again on the same data folder
        children = list(gateway.children())
        killed = gateway.kill9()
        event("gateway_killed", pid=killed, children=children)
        load.phase = "5 gateway down"
        gone = wait_for(lambda: not pids_alive(children), 60)
        event("children_after_gateway_kill", all_exited=gone, alive=pids_alive(children))
        gateway.start()
        event("gateway_started", pid=gateway.process.pid, children=gateway.children())
        report["phases"].append(phase(load, "6 load after restart", args.phase_s))
        load_thread.stop()
        report["phases"].append({"phase": "totals", "acked": load.acked(), "failures": load.failures})
        report["failure_examples"] = load.failure_examples

        # ---- checks
        report["sessions_check"] = check_sessions(gateway, load.acks)
        report["audit_verify"] = audit_verify(gateway)
        event("audit_verify", exit=report["audit_verify"]["exit"], out=report["audit_verify"]["stdout"][-600:])
        report["tamper"] = tamper_checks(gateway)
        for item in report["tamper"]:
            event("tamper", **{k: v for k, v in item.items() if k != "verify"}, verify=item["verify"][-400:])
        report["restart_log_errors"] = [json.dumps(line)[:600] for line in gateway.log_lines()
                                        if line.get("level") in ("error", "critical")][:20]  # fmt: skip
    finally:
        if load_thread is not None:
            load_thread.stop()
        with contextlib.suppress(Exception):
            gateway.stop()

    sessions = report["sessions_check"]
    ok = (not sessions["lost"] and not sessions["out_of_order"] and not sessions["changed"]
          and report["audit_verify"]["exit"] == 0 and all(t["ok"] for t in report["tamper"]))  # fmt: skip
    report["ok"] = ok
    print(summary(report))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "hardening-faults.json").write_text(json.dumps(report, indent=1, default=str) + "\n")
    if args.keep:
        print(f"kept {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0 if ok else 1


def summary(report: dict[str, Any]) -> str:
    lines = [f"{report['clients']} clients, sessions of {report['steps_per_session']} steps, max_tokens 8:"]
    for item in report["phases"]:
        extra = ""
        if "store_back_after_s" in item:
            back = item["store_back_after_s"]
            extra = f"; store back after {back} s" if back is not None else "; the store did NOT come back"
        lines.append(f"  {item['phase']}: {item['acked']} acknowledged steps, failures {item['failures']}{extra}")
    s = report["sessions_check"]
    lines.append(f"  sessions: {s['sessions']}, acknowledged steps: {s['acked_steps']}, lost: {len(s['lost'])}, "
                 f"out of order: {len(s['out_of_order'])}, text changed: {len(s['changed'])}, "
                 f"recorded but not acknowledged: {s['recorded_not_acked']}")  # fmt: skip
    verdict = report["audit_verify"]
    lines.append(f"  audit verify after the faults: exit {verdict['exit']}")
    lines += [f"    {line}" for line in verdict["stdout"].splitlines()]
    for item in report["tamper"]:
        lines.append(f"  tamper {item['how']} (record {item['edited_record']}, seq {item['edited_seq']} of "
                     f"{item['chain_records']}): exit {item['exit']} (expected {item['expected_exit']}), names the "
                     f"edited record: {item['names_edited_record']}, exit after restoring: {item['restored_exit']}"
                     f" -> {'ok' if item['ok'] else 'NOT OK'}")  # fmt: skip
        lines += [f"    {line}" for line in item["verify"].splitlines() if line.startswith("dev")]
    lines.append(f"  overall: {'ok' if report['ok'] else 'NOT OK'}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
