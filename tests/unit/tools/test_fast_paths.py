"""The shortcuts the decision path takes give what the general path gives: `leaves` without generators,
the phrase search bounded by the lines holding each word, the scan's guards (no upper case: no IBAN; an
address that is the whole text: no URL; digits counted in UTF-8), one analysis per text serving the key
lookup and the rules, and a decision read from the rules' outcomes without building each one's result."""

import string
from collections import Counter
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from rails.tools.config import load_tool_policy
from rails.tools.decide import STRENGTH, Decider, SessionView
from rails.tools.provenance import ORIGINS_PER_KEY, Origin, ProvenanceView, Texts, ValueIndex
from rails.tools.values import _EMAIL, _IBAN, _URL, _scan, _text, entities, leaves, lookup_keys, sinks, value_keys

_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=8))
_VALUES = st.recursive(
    _SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.lists(inner, max_size=3).map(tuple),
        st.dictionaries(st.text(max_size=4), inner, max_size=4),
    ),
    max_leaves=24,
)


def _leaves_by_generator(value):
    if isinstance(value, dict):
        for item in value.values():
            yield from _leaves_by_generator(item)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _leaves_by_generator(item)
    else:
        yield value


@settings(max_examples=200, deadline=None)
@given(_VALUES)
def test_leaves_are_the_scalars_depth_first_in_order(value):
    assert leaves(value) == list(_leaves_by_generator(value))


_WORDS = ["a", "b", "invoice", "12", "123", "x@y.com", "paid", "on", "time"]


def _found_line_by_line(texts: Texts, phrase: str, whole: bool) -> list[Origin]:
    found: list[Origin] = []
    for origin, text in texts.lines:
        held = text == f" {phrase} " if whole else f" {phrase} " in text
        if held and origin not in found and len(found) < ORIGINS_PER_KEY:
            found.append(origin)
    return found


_LINES = st.tuples(
    st.sampled_from(["user", "system"]), st.integers(0, 4), st.lists(st.sampled_from(_WORDS), min_size=1, max_size=8)
)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(_LINES, max_size=14),
    st.lists(st.tuples(st.lists(st.sampled_from(_WORDS), min_size=1, max_size=3), st.booleans()), max_size=12),
)
def test_a_phrase_search_finds_what_reading_every_line_finds(lines, phrases):
    texts = Texts()
    for role, step, words in lines:
        texts.add(Origin(role, step=step), words)
    for words, whole in phrases:
        phrase = " ".join(words)
        assert texts.find(phrase, whole) == _found_line_by_line(texts, phrase, whole), (phrase, whole)


_PIECES = st.sampled_from([
    "https://Example.com/a/2024-05-01/x", "www.shop.io/p?id=42", "Bob.Smith@Example.COM", "a@b.co", "http://a@b.com/x",
    "DE89 3704 0044 0532 0130 00", "GB29NWBK60161331926819", "+44 20 7946 0958", "555.123.4567", "March 5th, 2024",
    "2024-03-05 08:00", "u1234@example.com", "/tmp/1234", "a.com@b.org", "x@y.com.", "see", "42", "\u0130",
    "\u017fep", "é", "\u0661\u0662", "http://.", "see http://localhost/x", "x.com/a.", "www.a.com:80/p",
    "HTTP://WWW.X.COM/2024-5-1", "https://x.com/a@b.co", "ftp://a.b/c,", "1234.com", "x.com/GB29NWBK60161331926819",
    "mailto:a@b.com", '"http://q.io/x"', "\n", " ", "(", ")", ".", "@", "-",
])  # fmt: skip
_TEXTS = st.one_of(st.lists(_PIECES, min_size=1, max_size=8).map("".join),
                   st.lists(_PIECES, min_size=1, max_size=8).map(" ".join), st.text(max_size=40))  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(_TEXTS)
def test_the_scans_guards_skip_only_what_cannot_match(text):
    if text.islower():  # no upper-case letter: an IBAN cannot start
        assert _IBAN.search(text) is None
    emails = list(_EMAIL.finditer(text))
    if emails and emails[0].span() == (0, len(text)):  # every URL would start inside the address
        assert all(emails[0].start() <= url.start() < emails[0].end() for url in _URL.finditer(text))
    raw = text.encode("utf-8", "surrogatepass")
    assert len(raw) - len(raw.translate(None, b"0123456789")) == sum(c in "0123456789" for c in text)
    assert _scan(text) == entities(text)


@settings(max_examples=300, deadline=None)
@given(_TEXTS)
def test_one_analysis_serves_the_lookup_and_the_rules(text):
    """The keys of a text are those of its words and of each scanned value that is all of it (and dates);
    its sinks are the scan's, as written; a lookup holds the keys of the text and of each sink."""
    stripped = text.strip()
    scanned = entities(stripped)
    whole = [f"{kind}:{form}" for kind, form, written in scanned if written.strip() == stripped or kind == "date"]
    assert value_keys(text)[len(value_keys(text)) - len(whole) :] == whole
    kinds = ("url", "email", "iban", "tel")
    assert sinks(text) == list(dict.fromkeys(written for kind, _, written in entities(text) if kind in kinds))
    keys = lookup_keys({"x": text})
    assert set(value_keys(text)) <= keys
    for sink in sinks(text):
        assert set(value_keys(sink)) <= keys, sink


@settings(max_examples=300, deadline=None)
@given(_TEXTS)
def test_a_sinks_keys_from_the_scan_that_found_it_are_those_of_its_own_scan(text):
    """A URL or address inside a text is keyed from the text's scan (not scanned again when a rule asks about
    it): the keys are those that scanning it alone gives, whichever way it is asked about first."""
    found = sinks(text)
    for sink in found:
        assert value_keys(sink) == list(_text.__wrapped__(sink)[0]), sink
        assert sinks(sink) == list(dict.fromkeys(_text.__wrapped__(sink)[2])), sink


def test_dates_with_letters_that_match_a_month_name_in_any_case_do_not_fail():
    """`re.IGNORECASE` matches a dotless i, an I with a dot, a long s and the Kelvin sign to ASCII letters: such
    a month name reads as the month it spells (it raised KeyError, which failed the indexing of the whole text)."""
    assert ("date", "2024-04-05", "2024-04-05") in entities("apr\u0131l 5, 2024 (dec)")
    assert ("date", "2024-09-05", "2024-09-05") in entities("\u017feptember 5, 2024 or jan")
    assert ("date", "2024-04-05", "2024-04-05") in entities("APR\u0130L 5, 2024 may")


def _policy(tmp_path: Path, *rules: str, default: str = "deny"):
    path = tmp_path / "tools.yaml"
    path.write_text(f"version: 1\ndefault: {default}\nrules:\n" + "".join(f"  - {rule}\n" for rule in rules))
    return load_tool_policy(path)


@settings(max_examples=60, deadline=None)
@given(st.fixed_dictionaries({}, optional={"amount": st.one_of(st.integers(-5, 500), st.text(string.ascii_letters,
       max_size=3)), "to": st.sampled_from(["ann", "bob", "x@evil.test", 3])}))  # fmt: skip
def test_a_decision_is_the_strongest_enforced_rule_that_explain_shows_matching(tmp_path_factory, args):
    import json

    policy = _policy(
        tmp_path_factory.mktemp("p"),
        "{name: big, tools: [pay], when: 'call.args.amount > 100', action: require_approval}",
        "{name: always, tools: [pay], action: allow}",
        "{name: known, tools: [pay], when: 'call.args.to == \"ann\"', action: allow}",
        "{name: watch, tools: ['p*'], when: 'has(call.args.to) && !trusted(call.args.to)', action: deny, shadow: true}",
        "{name: calls, tools: ['p*'], when: 'tool_count(\"pay\") > 1', action: deny}",
    )
    view = SessionView("s", tool_counts=Counter(pay=len(args)))
    view.provenance = ProvenanceView(ValueIndex())
    decider = Decider(policy, None)
    decision = decider.decide("c", "pay", json.dumps(args), view)
    results = decider.evaluate("c", "pay", args, view)
    enforced = [r for r in results if r.matched and not r.shadow]
    strongest = max(enforced, key=lambda r: STRENGTH[r.action], default=None)  # the first of the strongest
    assert (decision.action, decision.rule) == ((strongest.action, strongest.rule) if strongest else ("deny", ""))
    assert decision.reason == (strongest.reason if strongest else "no rule matched; default deny")
    assert decision.shadow == [{"rule": r.rule, "action": r.action, "reason": r.reason}
                               for r in results if r.matched and r.shadow]  # fmt: skip


def test_lists_that_rules_get_from_functions_are_not_kept_alive_and_read_right():
    """cel-expr-python keeps a reference to each container a function returns: `provenance()` and `sinks()`
    give CEL one list per thread, refilled at each call (CEL copies it), so nothing accumulates, and a rule
    that calls them inside one another still reads each call's own result."""
    import gc

    from rails.tools.cel_runtime import CallState, activation, bound, compile_condition, evaluate

    index = ValueIndex()
    index.add_message("user", "pay ann@example.com 30 and see https://a.example.org/x", 1)
    index.add_tool_result('{"to": "bob@example.net", "amount": 30}', "inbox", 2, lambda path: ("untrusted",))
    nested = compile_condition(
        'provenance(call.args.amount).exists(o, o.source == "user" && provenance(call.args.to).size() == 1'
        ' && sinks(call.args.note).exists(s, sinks(call.args.to)[0] == "ann@example.com" && s.startsWith("https")))'
    )
    args = {"amount": 30, "to": "ann@example.com", "note": "see https://a.example.org/x"}

    def decide() -> bool:
        with bound(CallState(provenance=ProvenanceView(index))):
            return evaluate(nested, activation({"call": {"args": args}}))

    assert decide() and [o.source for o in ProvenanceView(index).origins(30)] == ["tool", "user"]
    gc.collect()
    before = len(gc.get_objects())
    for _ in range(300):
        decide()
    gc.collect()
    assert len(gc.get_objects()) - before < 30
