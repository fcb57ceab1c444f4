"""Property: whatever a client sends, decoding ends in a request or in a 400-class error, never anything else."""

import msgspec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.errors import InvalidJSON, InvalidRequest, kind_of
from gateway.http.routes.chat import decode_chat_request

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=20,
)
FIELDS = [
    "model", "messages", "stream", "stream_options", "tools", "tool_choice", "response_format", "temperature",
    "top_p", "max_tokens", "max_completion_tokens", "stop", "seed", "n", "metadata", "parallel_tool_calls",
]  # fmt: skip
VALID = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def decodes_or_400(raw: bytes) -> None:
    try:
        decode_chat_request(raw)
    except (InvalidJSON, InvalidRequest) as exc:
        assert kind_of(exc.error_type).status == 400


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300))
def test_arbitrary_bytes(raw):
    decodes_or_400(raw)


@settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.sampled_from(FIELDS), json_values, max_size=6))
def test_valid_request_with_arbitrary_field_values(changes):
    decodes_or_400(msgspec.json.encode({**VALID, **changes}))


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(st.dictionaries(st.sampled_from(["role", "content", "tool_calls", "tool_call_id", "name"]), json_values))
)
def test_arbitrary_messages(messages):
    decodes_or_400(msgspec.json.encode({"model": "m", "messages": messages}))
