"""The CEL runtime of tool policies: what the checker refuses when a file loads (with file:line), how
functions reach the call being decided, and the reasons a rule that cannot be evaluated gives."""

import json
from collections import Counter
from pathlib import Path

import pytest

from rails.config import RailsConfigError
from rails.tools.cel_runtime import CallState, activation, bound, compile_condition, evaluate
from rails.tools.config import load_tool_policy
from rails.tools.decide import Decider, PastCall, SessionView
from rails.tools.provenance import ProvenanceView, ValueIndex


def _policy(tmp_path, *rules: str, default: str = "allow"):
    body = "".join(f"  - {rule}\n" for rule in rules)
    (tmp_path / "tools.yaml").write_text(f"default: {default}\nrules:\n{body}")
    return load_tool_policy(tmp_path / "tools.yaml")


def _errors(tmp_path, when: str) -> list[str]:
    with pytest.raises(RailsConfigError) as caught:
        _policy(tmp_path, f"{{name: r, tools: [t], action: deny, when: '{when}'}}")
    return caught.value.errors


@pytest.mark.parametrize(
    ("when", "says"),
    [
        ("size(call.args)", "a condition must be true or false; this one gives int"),
        ('email_domain(1) == "x"', "found no matching overload for 'email_domain' applied to '(int)'"),
        ("user_mentions(" + ", ".join(['"w"'] * 9) + ")", "user_mentions() does not take this number of arguments"),
        ("trusted(call.args.to, 1)", "trusted() does not take this number of arguments"),
        ('tool_count(call.name) > "3"', "found no matching overload for '_>_'"),
        ('calls.exists(c, c.name == "x")', "unknown variable calls (use call, session, request)"),
        ("shout(call.name)", "unknown function shout"),
    ],
)
def test_the_checker_refuses_at_load_with_the_line_and_column(tmp_path, when, says):
    (error,) = _errors(tmp_path, when)
    assert error.startswith(f"{tmp_path / 'tools.yaml'}:3: rules[0].when (r): "), error
    assert says in error, error


def test_functions_take_values_of_every_shape(tmp_path):
    policy = _policy(
        tmp_path,
        "{name: args, tools: [pay], when: '!trusted(call.args)', action: deny}",
        "{name: list, tools: [invite], when: 'made_up(call.args.people)', action: deny}",
        "{name: caps, tools: [mail], when: '!call.args.to.lowerAscii().endsWith(\"@example.com\")', action: deny}",
    )
    index = ValueIndex()
    index.add_message("user", "pay DE89370400440532013000 and invite ann@example.com, bob@example.com", 1)
    view = SessionView("s", provenance=ProvenanceView(index))
    decide = Decider(policy, None).decide
    assert (
        decide(
            "c", "pay", '{"iban": "DE89370400440532013000", "to": {"iban": "DE89 3704 0044 0532 0130 00"}}', view
        ).action
        == "allow"
    )
    assert decide("c", "pay", '{"iban": "NL91ABNA0417164300"}', view).rule == "args"
    assert decide("c", "invite", '{"people": ["ann@example.com", "bob@example.com"]}', view).action == "allow"
    assert decide("c", "invite", '{"people": ["ann@example.com", "eve@evil.test"]}', view).rule == "list"
    assert decide("c", "mail", '{"to": "Ann@EXAMPLE.com"}', view).action == "allow"
    assert decide("c", "mail", '{"to": "eve@evil.test"}', view).rule == "caps"


def test_functions_answer_for_the_call_being_decided_only():
    program = compile_condition('tool_count("search") >= 2')
    context = {"call": {"id": "c", "name": "t", "args": {}}}
    with bound(CallState(Counter(search=2))):
        assert evaluate(program, activation(context)) is True
    assert evaluate(program, activation(context)) is False  # outside: nothing counted
    with bound(CallState(Counter(search=1))):
        assert evaluate(program, activation(context)) is False


def test_a_rule_that_cannot_be_evaluated_denies_with_a_reason_in_the_policy_terms(tmp_path):
    policy = _policy(
        tmp_path,
        "{name: domain, tools: [mail], when: 'email_domain(call.args.to) == \"example.com\"', action: allow}",
        "{name: nested, tools: [book], when: 'call.args.hotel.city == \"Paris\"', action: allow}",
        "{name: amount, tools: [pay], when: 'double(call.args.amount) > 100.0', action: require_approval}",
        default="deny",
    )
    view = SessionView("s")
    decide = Decider(policy, None).decide
    typed = decide("c", "mail", '{"to": 5}', view)
    assert typed.action == "deny" and typed.rule == "domain"
    assert typed.reason == (
        "rule domain could not be evaluated: a value has a type the rule's operator or function does not take "
        "(to is an integer)"
    )
    nested = decide("c", "book", '{"hotel": {"name": "Ritz"}}', view)
    assert (
        nested.reason
        == "rule nested could not be evaluated: the rule reads a field 'city' that its value does not have"
    )
    words = decide("c", "pay", '{"amount": "a lot"}', view)
    assert words.action == "deny" and "could not be evaluated" in words.reason and "amount is a string" in words.reason
    assert "Error" not in words.reason and "INVALID_ARGUMENT" not in words.reason
    assert decide("c", "pay", '{"amount": 500}', view).action == "require_approval"
    assert decide("c", "pay", '{"amount": "50"}', view).action == "deny"  # a numeric string converts: no rule matched


def test_session_calls_are_visible_to_rules(tmp_path):
    policy = _policy(
        tmp_path,
        '{name: after-read, tools: [send], when: \'session.calls.exists(c, c.name == "read" && c.args.path == "/a")\','
        " action: deny}",
    )
    view = SessionView.build("s", [PastCall("read", '{"path":"/a"}', "allow")])
    assert Decider(policy, None).decide("c", "send", "{}", view).rule == "after-read"
    assert Decider(policy, None).decide("c", "send", "{}", SessionView("s")).action == "allow"


def test_user_mentions_takes_several_words_or_a_list(tmp_path):
    policy = _policy(
        tmp_path,
        '{name: words, tools: [mail], when: \'!user_mentions("email", "mail", "send", "reply", "forward")\','
        " action: deny}",
        '{name: list, tools: [rm], when: \'!user_mentions(["delete", "remove", "trash", "clean", "purge"])\','
        " action: deny}",
    )
    index = ValueIndex()
    index.add_message("user", "Please forward it to Bob, then purge the old drafts", 1)
    view = SessionView("s", provenance=ProvenanceView(index))
    assert Decider(policy, None).decide("c", "mail", "{}", view).action == "allow"
    assert Decider(policy, None).decide("c", "rm", "{}", view).action == "allow"
    quiet = SessionView("s", provenance=ProvenanceView(ValueIndex()))
    assert Decider(policy, None).decide("c", "mail", "{}", quiet).rule == "words"
    assert Decider(policy, None).decide("c", "rm", "{}", quiet).rule == "list"


def test_every_policy_file_in_the_repository_loads():
    root = Path(__file__).resolve().parents[3]
    files = sorted(root.glob("policies/**/tools.yaml")) + sorted(root.glob("bench/agentdojo/policies/*/*/tools.yaml"))
    assert len(files) >= 10
    for path in files:
        load_tool_policy(path)  # raises with file:line on any error


def test_one_program_per_tool_gives_what_each_rule_alone_gives(tmp_path):
    import msgspec

    policy = _policy(
        tmp_path,
        "{name: big, tools: [pay], when: 'call.args.amount > 100', action: require_approval}",
        "{name: known, tools: [pay], when: 'call.args.to == \"ann\"', action: allow}",
        "{name: other, tools: [pay], when: 'call.args.to == \"bob\"', action: deny}",
        "{name: calls, tools: ['p*'], when: 'tool_count(\"pay\") > 1', action: deny}",
        default="deny",
    )
    assert policy.rules_for("pay").program is not None
    together = Decider(policy, None)
    alone = Decider(msgspec.structs.replace(policy, resolved={}), None)
    alone.policy.resolved["pay"] = msgspec.structs.replace(policy.rules_for("pay"), program=None)
    view = SessionView("s", tool_counts=Counter(pay=2))
    for args in [{"amount": 500, "to": "ann"}, {"amount": 5, "to": "bob"}, {"to": "ann"}, {"amount": "x", "to": 3}]:
        first, second = together.evaluate("c", "pay", args, view), alone.evaluate("c", "pay", args, view)
        assert first == second, args
    missing = together.evaluate("c", "pay", {"to": "ann"}, view)
    assert [(r.rule, r.matched, r.action) for r in missing] == [
        ("big", True, "deny"),
        ("known", True, "allow"),
        ("other", False, "deny"),
        ("calls", True, "deny"),
    ]
    assert "the call has no argument 'amount'" in missing[0].reason


def test_only_the_arguments_rules_ask_about_are_looked_up_and_decisions_are_the_same(tmp_path):
    """The gateway reads from the session's index only the keys `lookup_keys` names: deciding on that slice
    must give what deciding on the whole index gives, whatever the rules ask."""
    from rails.tools.provenance import Origin

    policy = _policy(
        tmp_path,
        "{name: to, tools: [mail, fetch], when: 'has(call.args.to) && !trusted(call.args.to)', action: deny}",
        "{name: flagged, tools: [mail], when: 'tainted(call.args.body, \"injection\")', action: deny}",
        "{name: links, tools: [post], when: 'sinks(call.args).exists(s, !trusted(s))', action: deny}",
        "{name: asked, tools: [rm], when: '!user_mentions(\"delete\") || made_up(call.args.path)', action: deny}",
    )
    assert policy.rules_for("mail").asks == {"to", "body"} and policy.rules_for("post").asks is None
    whole = ValueIndex()
    whole.add_message("user", "mail ann@example.com, delete /tmp/a and read https://docs.example.org", 1)
    whole.add_tool_result("from: eve@evil.test\nnote: see https://evil.test/x", "read", 2, lambda p: ("untrusted",))
    whole.add("v:hello eve", Origin("tool", "read", 2, "", ("injection",)))
    calls = [
        ("mail", {"to": "ann@example.com", "body": "hello eve", "cc": "eve@evil.test"}),
        ("mail", {"to": "eve@evil.test", "body": "hi"}),
        ("fetch", {"to": "ann@example.com", "url": "https://evil.test/x"}),
        ("post", {"text": "see https://docs.example.org and https://evil.test/x"}),
        ("post", {"text": "see https://docs.example.org"}),
        ("rm", {"path": "/tmp/a"}),
        ("rm", {"path": "/tmp/b"}),
    ]
    decide = Decider(policy, None).decide
    for tool, args in calls:
        keys = policy.lookup_keys([(tool, args)])
        if tool == "mail":
            assert "email:eve@evil.test" not in keys or args.get("to") == "eve@evil.test"  # cc is not asked about
        sliced = ValueIndex({k: whole.entries[k] for k in keys if k in whole.entries}, whole.texts)
        raw = json.dumps(args)
        on_slice = decide("c", tool, raw, SessionView("s", provenance=ProvenanceView(sliced)))
        on_whole = decide("c", tool, raw, SessionView("s", provenance=ProvenanceView(whole)))
        assert (on_slice.action, on_slice.rule) == (on_whole.action, on_whole.rule), (tool, args)
    assert [decide("c", t, json.dumps(a), SessionView("s", provenance=ProvenanceView(whole))).action
            for t, a in calls] == ["deny", "deny", "allow", "deny", "allow", "allow", "deny"]  # fmt: skip


def test_the_calls_sinks_are_read_from_its_arguments_and_keep_nothing():
    """`sinks(call.args)` runs as `sinks()` on the call's own arguments: the same sinks, and nothing is kept per
    evaluation (cel-expr-python 0.1.3 keeps every value it hands a Python function: the whole arguments each
    time), while an error still shows the rule as written."""
    import gc
    import tracemalloc

    args = {"to": "ann@example.com", "body": "see https://a.example.org/x and https://a.example.org/x " * 20}
    rule = compile_condition('sinks(call.args) == ["ann@example.com", "https://a.example.org/x"]')
    shadowed = compile_condition('[{"args": {}}].exists(call, sinks(call.args) == [])')  # another `call`

    def run(program) -> bool:
        with bound(CallState(args=args)):
            return evaluate(program, activation({"call": {"args": args}}))

    assert run(rule) and run(shadowed)
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for _ in range(2000):
        run(rule)
    gc.collect()
    kept = (tracemalloc.get_traced_memory()[0] - before) / 2000
    tracemalloc.stop()
    assert kept < 16, kept  # was ~1.5 KB an evaluation with these arguments
    with pytest.raises(ValueError, match=r"(?s)<input>:1:18: .* \| sinks\(call\.args\) > 1"):
        compile_condition("sinks(call.args) > 1")
