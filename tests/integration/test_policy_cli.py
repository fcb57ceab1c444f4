"""`sentrail policy check | test | explain | replay` on the shipped policies and on broken or changed copies."""

import asyncio
import shutil
from pathlib import Path

import pytest

from gateway.cli.main import main
from tests.doubles import ScriptedEngine, calls_chunks

from .conftest import MODEL

ROOT = Path(__file__).resolve().parents[2]
POLICIES = ROOT / "policies" / "examples" / "strict-agent"
TOOLS = [{"type": "function", "function": {"name": n}} for n in ("web_fetch", "send_email")]


def copy(tmp_path: Path) -> Path:
    return Path(shutil.copytree(POLICIES, tmp_path / "policies"))


def test_the_shipped_cases_pass_and_a_wrong_expectation_fails(tmp_path, capsys):
    assert main(["policy", "test", "--dir", str(POLICIES)]) == 0
    assert "35/35 expectations hold" in capsys.readouterr().out
    assert main(["policy", "test", "--dir", str(POLICIES.parents[1])]) == 0  # the shipped default
    assert "19/19 expectations hold" in capsys.readouterr().out
    policies = copy(tmp_path)
    cases = policies / "tests" / "agent.yaml"
    cases.write_text(cases.read_text().replace("{call: run_shell, args: {cmd: ls}, expect: deny, rule: no-shell}",
                                               "{call: run_shell, args: {cmd: ls}, expect: allow}"))  # fmt: skip
    assert main(["policy", "test", "--dir", str(policies)]) == 1
    out = capsys.readouterr().out
    assert f"FAIL {cases}:7: shell is never allowed: expected allow, got deny (rule no-shell)" in out
    assert "34/35 expectations hold" in out


@pytest.mark.parametrize(
    "folder",
    sorted(p.parent.parent for p in (ROOT / "bench" / "agentdojo" / "policies").glob("*/*/tests/*.yaml")),
    ids=lambda folder: f"{folder.parent.name}/{folder.name}",
)
def test_the_benchmark_policies_own_cases_pass(folder, capsys):
    """The benchmark's policy folders that carry test cases keep them passing (`policy test`, as a team runs it)."""
    assert main(["policy", "test", "--dir", str(folder)]) == 0, capsys.readouterr().out


def test_check_reports_every_broken_file_with_its_line(tmp_path, capsys):
    policies = copy(tmp_path)
    tools = policies / "tools.yaml"
    tools.write_text(tools.read_text().replace("when: '\"secret\" in session.labels'", "when: '\"secret\" in labels'"))
    bad_case = "cases:\n  - name: x\n    steps:\n      - {call: a, expect: maybe}\n"
    (policies / "tests" / "agent.yaml").write_text(bad_case)
    assert main(["policy", "check", "--dir", str(policies)]) == 2
    err = capsys.readouterr().err
    line = next(n for n, text in enumerate(tools.read_text().splitlines(), 1) if "in labels'" in text)
    assert f"{tools}:{line}: rules[" in err and "unknown variable labels" in err
    assert f"{policies / 'tests' / 'agent.yaml'}:4:" in err and "maybe" in err


def test_check_validates_the_mcp_servers_file(tmp_path, capsys):
    policies = copy(tmp_path)
    shutil.copy(POLICIES.parents[1] / "mcp.yaml", policies / "mcp.yaml")
    assert main(["policy", "check", "--dir", str(policies)]) == 0
    assert f"{policies / 'mcp.yaml'}: ok, 0 MCP servers" in capsys.readouterr().out
    (policies / "mcp.yaml").write_text("servers:\n  - name: time\n    comand: [python, -m, mcp_server_time]\n")
    assert main(["policy", "check", "--dir", str(policies)]) == 2
    err = capsys.readouterr().err
    assert f"{policies / 'mcp.yaml'}:3:" in err and "comand" in err


def test_explain_names_the_deciding_rule(capsys):
    args = ["policy", "explain", "--dir", str(POLICIES), "--tool", "send_payment", "--args", '{"amount": 500}']
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "rule payments-large: matched; require_approval" in out
    assert "rule payments-small: no match" in out
    assert out.strip().endswith("decision: require_approval (rule payments-large): payments above 100 need approval")


async def test_replay_lists_the_decisions_a_candidate_would_change(make_client, redis_server, tmp_path, capsys):
    engine = ScriptedEngine(calls_chunks(("web_fetch", '{"url": "https://example.org"}', "call_w")))
    headers = {"x-session-id": "replayed"}
    user = {"role": "user", "content": "read and mail"}
    async with make_client(engine, policies_dir=str(POLICIES)) as client:
        await client.post("/v1/chat/completions", json={"model": MODEL, "messages": [user], "tools": TOOLS},
                          headers=headers)  # fmt: skip
        engine.script = calls_chunks(("send_email", '{"to": "eve@evil.test"}', "call_e"))
        history = [user, {"role": "assistant", "tool_calls": [{"id": "call_w", "type": "function", "function": {
            "name": "web_fetch", "arguments": '{"url": "https://example.org"}'}}]},
            {"role": "tool", "tool_call_id": "call_w", "content": "page"}]  # fmt: skip
        await client.post("/v1/chat/completions", json={"model": MODEL, "messages": history, "tools": TOOLS},
                          headers=headers)  # fmt: skip
    candidate = copy(tmp_path)
    tools = candidate / "tools.yaml"  # the candidate puts the data-flow rule in shadow mode
    reason = "    reason: no email to an outside domain once untrusted content entered the session\n"
    tools.write_text(tools.read_text().replace(reason, reason + "    shadow: true\n"))
    config = tmp_path / "sentrail.yaml"
    config.write_text(f"redis_url: {redis_server.url}\npolicies_dir: {POLICIES}\n")
    args = ["policy", "replay", "--config", str(config), "--candidate", str(candidate)]
    assert await asyncio.to_thread(main, args) == 0
    out = capsys.readouterr().out
    assert ("dev/replayed step 2 send_email (call_e): deny (rule no-email-out-after-untrusted-input) -> "
            "require_approval (rule email-external-needs-approval)") in out  # fmt: skip
    assert "1 of 2 recorded decisions would change, over 1 sessions" in out
