"""Tool-call policy files: load errors with file:line (CEL errors with their column), and decisions:
precedence, defaults, shadow rules, fail-closed evaluation, schemas, limits, labels."""

from pathlib import Path

import pytest

from rails.config import RailsConfigError
from rails.tools.cel_runtime import path_under
from rails.tools.config import load_tool_policy
from rails.tools.decide import Decider, PastCall, SessionView, canonical

ROOT = Path(__file__).resolve().parents[3]
SHIPPED = load_tool_policy(ROOT / "policies" / "examples" / "strict-agent" / "tools.yaml")


def decide(tool: str, arguments: str, labels=(), policy=SHIPPED, schemas=None, calls=()):
    view = SessionView.build("s", calls, tenant="acme", model="m", labels=set(labels))
    return Decider(policy, schemas).decide("call_1", tool, arguments, view)


@pytest.mark.parametrize(
    ("tool", "arguments", "labels", "action", "rule"),
    [
        ("run_shell", '{"cmd": "ls"}', (), "deny", "no-shell"),
        ("exec_python", "{}", (), "deny", "no-shell"),  # glob
        ("web_fetch", '{"url": "https://example.org"}', (), "allow", "web-read"),
        ("web_fetch", '{"url": "http://example.org"}', (), "deny", "web-plain-http"),
        ("read_file", '{"path": "/workspace/notes.md"}', (), "allow", "files-read-workspace"),
        ("read_file", '{"path": "/workspace/../etc/passwd"}', (), "deny", ""),  # default deny
        ("write_file", '{"path": "/workspace/.env"}', (), "deny", ""),
        ("send_email", '{"to": "bob@example.com"}', (), "allow", "email-internal"),
        ("send_email", '{"to": "eve@evil.test"}', (), "require_approval", "email-external-needs-approval"),
        ("send_email", '{"to": "eve@evil.test"}', ("untrusted",), "deny", "no-email-out-after-untrusted-input"),
        ("send_email", '{"to": "bob@example.com"}', ("untrusted",), "allow", "email-internal"),
        ("send_email", '{"to": "bob@example.com"}', ("secret",), "deny", "no-secrets-out"),
        ("send_payment", '{"amount": 40}', (), "allow", "payments-small"),
        ("send_payment", '{"amount": 4000}', (), "require_approval", "payments-large"),
        ("lookup_stock", "{}", (), "allow", "read-only-lookups"),
        ("delete_everything", "{}", (), "deny", ""),
    ],
)
def test_the_shipped_policy_decides(tool, arguments, labels, action, rule):
    decision = decide(tool, arguments, labels)
    assert (decision.action, decision.rule) == (action, rule), decision
    assert decision.policy_version == SHIPPED.version and decision.reason


def test_shadow_rules_are_recorded_not_enforced():
    decision = decide("send_payment", '{"amount": 40}', ("untrusted",))
    assert decision.action == "allow"
    (shadow,) = decision.shadow
    assert (shadow["rule"], shadow["action"]) == ("watch-payments-after-untrusted", "deny")


def test_a_rule_that_cannot_be_evaluated_denies():
    decision = decide("send_payment", '{"amount": "lots"}')
    assert decision.action == "deny" and "could not be evaluated" in decision.reason
    assert decide("send_email", '{"subject": "no recipient"}').action == "deny"


def test_arguments_are_checked_against_the_declared_schema():
    schema = {"type": "object", "properties": {"amount": {"type": "number", "maximum": 1000}}, "required": ["amount"]}
    schemas = {"send_payment": schema}
    assert decide("send_payment", '{"amount": 40}', schemas=schemas).action == "allow"
    bad = decide("send_payment", '{"amount": 5000}', schemas=schemas)
    assert bad.action == "deny" and "schema" in bad.reason and "amount" in bad.reason
    assert "not declared" in decide("run_anything", "{}", schemas=schemas).reason
    assert "not valid JSON" in decide("send_payment", '{"amount": ', schemas=schemas).reason


def test_limits_count_allowed_calls_and_repeats():
    same = PastCall("web_search", canonical({"q": "x"}), "allow")
    assert decide("web_search", '{"q": "x"}', calls=[same] * 2).action == "allow"
    looped = decide("web_search", '{"q":"x"}', calls=[same] * 3)
    assert looped.action == "deny" and looped.rule == "limits" and "same call" in looped.reason
    paid = [PastCall("send_payment", canonical({"amount": i}), "allow") for i in range(5)]
    assert "max_calls_per_tool[send_payment]=5" in decide("send_payment", '{"amount": 9}', calls=paid).reason
    denied = [PastCall("send_payment", canonical({"amount": i}), "deny") for i in range(9)]
    assert decide("send_payment", '{"amount": 9}', calls=denied).action == "allow"  # denied calls do not count


def test_labels_by_tool_and_by_rail():
    assert SHIPPED.labels_for_tool("web_fetch") == {"untrusted"}
    assert SHIPPED.labels_for_tool("send_email") == set()
    assert SHIPPED.label_for_rail("tool_result.pii") == "pii"
    assert SHIPPED.label_for_rail("tool_result.injection") is None


def test_precedence_is_strictest_match_then_default(tmp_path):
    path = tmp_path / "tools.yaml"
    path.write_text(
        "default: allow\nrules:\n"
        "  - {name: a, tools: ['*'], action: allow}\n"
        "  - {name: b, tools: [t], action: require_approval}\n"
        "  - {name: c, tools: [t], when: 'call.args.x > 1', action: deny, reason: too big}\n"
    )
    policy = load_tool_policy(path)
    assert decide("t", '{"x": 1}', policy=policy).rule == "b"
    big = decide("t", '{"x": 2}', policy=policy)
    assert (big.rule, big.reason) == ("c", "too big")
    assert decide("u", "{}", policy=policy).rule == "a"


@pytest.mark.parametrize(
    ("path", "root", "inside"),
    [("/w/a", "/w", True), ("/w", "/w", True), ("/w/../x", "/w", False), ("/wx/a", "/w", False),
     ("a/b", "/w", True), ("../etc", "/w", False)],
)  # fmt: skip
def test_path_under(path, root, inside):
    assert path_under(path, root) is inside


def test_every_load_error_is_reported_with_its_line(tmp_path):
    path = tmp_path / "tools.yaml"
    path.write_text(
        "version: 1\n"                                               # 1
        "rules:\n"                                                   # 2
        "  - name: syntax\n"                                         # 3
        "    tools: [a]\n"                                           # 4
        "    when: 'call.args.x >'\n"                                # 5
        "    action: deny\n"                                         # 6
        "  - name: typo\n"                                           # 7
        "    tools: [a]\n"                                           # 8
        "    action: deny\n"                                         # 9
        "    when: |\n"                                              # 10
        "      call.name == \"a\" &&\n"                              # 11
        "      sesion.labels.size() > 0\n"                           # 12
        "  - name: verb\n"                                           # 13
        "    tools: [a]\n"                                           # 14
        "    action: maybe\n"                                        # 15
        "  - name: fn\n"                                             # 16
        "    tools: [a]\n"                                           # 17
        "    when: 'shout(call.name)'\n"                             # 18
        "    action: allow\n"                                        # 19
        "  - {name: fn, tools: [b], action: allow}\n"                # 20
    )  # fmt: skip
    with pytest.raises(RailsConfigError) as caught:
        load_tool_policy(path)
    errors = caught.value.errors
    assert len(errors) == 5, errors
    assert errors[0].startswith(f"{path}:5: rules[0].when (syntax): CEL error at column")
    # the typo's own line inside the block, and its column
    assert errors[1].startswith(f"{path}:12: rules[1].when (typo): CEL error at column 7: unknown variable sesion")
    assert errors[2].startswith(f"{path}:15: rules[2]") and "maybe" in errors[2]
    assert errors[3].startswith(f"{path}:18: rules[3].when (fn)") and "unknown function shout" in errors[3]
    assert errors[4].startswith(f"{path}:20: rules[4]") and "duplicate rule name 'fn'" in errors[4]


def test_a_cel_error_in_a_block_expression_names_its_line(tmp_path):
    path = tmp_path / "tools.yaml"
    path.write_text("rules:\n  - name: r\n    tools: [a]\n    action: deny\n    when: |\n"
                    "      call.name == 'a' &&\n      )\n")  # fmt: skip
    with pytest.raises(RailsConfigError) as caught:
        load_tool_policy(path)
    (error,) = caught.value.errors
    assert error.startswith(f"{path}:7: rules[0].when (r): CEL error at column"), error
