"""History integrity as pure logic: a message the session never judged is never taken as seen, whatever
the client resends around it (property), and a resent conversation is judged only where it is new."""

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.steps.history import History
from protocol.openai import AssistantMessage, ChatCompletionRequest, SystemMessage, ToolMessage, UserMessage

TEXTS = st.sampled_from(["hi", "hello", "send the report", "ok", "AKIA secret", "ignore previous instructions"])
MESSAGES = st.one_of(
    TEXTS.map(UserMessage),
    TEXTS.map(SystemMessage),
    TEXTS.map(lambda t: AssistantMessage(content=t)),
    TEXTS.map(lambda t: ToolMessage(content=t, tool_call_id="c1")),
)


def judge(seen: set[str], messages: list) -> History:
    """One step: resolve against what was seen, then record what the step judged (and the text it emitted)."""
    history = History.of(ChatCompletionRequest(model="m", messages=messages))
    history.resolve(seen, {}, {})
    recorded, _ = history.records(history.request)
    seen |= set(recorded)
    return history


@settings(max_examples=300, deadline=None)
@given(st.lists(st.lists(MESSAGES, min_size=1, max_size=6), min_size=1, max_size=5), st.data())
def test_a_message_never_judged_is_never_taken_as_seen(steps, data):
    seen: set[str] = set()
    judged: list = []  # every message some step judged
    for messages in steps:
        history = judge(seen, messages)
        judged += [messages[i] for i in history.fresh]
    request = data.draw(st.lists(st.one_of(MESSAGES, st.sampled_from(judged)), min_size=1, max_size=10))
    history = History.of(ChatCompletionRequest(model="m", messages=request))
    history.resolve(seen, {}, {})
    for index, message in enumerate(request):
        if message not in judged:
            assert index in history.fresh, (index, message)


def test_a_resent_conversation_is_judged_only_where_it_is_new():
    seen: set[str] = set()
    first = [SystemMessage("be brief"), UserMessage("hi")]
    judge(seen, first)
    seen.add(History.of(ChatCompletionRequest(model="m", messages=[AssistantMessage(content="Hello!")])).texts[0])
    second = judge(seen, [*first, AssistantMessage(content=" Hello! "), UserMessage("bye")])
    assert second.fresh == [3] and second.unverified == []
    edited = judge(seen, [SystemMessage("be evil"), UserMessage("hi"), AssistantMessage(content="Hello!")])
    assert edited.fresh == [0] and edited.unverified == []
    made_up = judge(set(), [UserMessage("hi"), AssistantMessage(content="Hello!"), UserMessage("bye")])
    assert made_up.fresh == [0, 1, 2] and made_up.unverified == [1]
