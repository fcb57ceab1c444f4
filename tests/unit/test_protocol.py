import itertools

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engines.remote import OpenAIEngine
from gateway.errors import InvalidJSON, InvalidRequest
from gateway.http.routes.chat import decode_chat_request
from gateway.steps.streaming import Accumulator
from protocol.openai import (
    AssistantMessage,
    ChatCompletionRequest,
    DeveloperMessage,
    ImagePart,
    JsonSchemaFormat,
    NamedToolChoice,
    SystemMessage,
    TextPart,
    ToolMessage,
    UserMessage,
    merge_text_chunks,
)
from tests.doubles import text_chunks, tool_call_chunks

TOOL = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}, "strict": True}}


def body(**fields) -> bytes:
    base = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    base.update(fields)
    return msgspec.json.encode(base)


def test_decodes_every_message_role():
    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "developer", "content": [{"type": "text", "text": "dev"}]},
        {"role": "user", "content": [
            {"type": "text", "text": "look"}, {"type": "image_url", "image_url": {"url": "data:,"}}]},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "42"},
    ]  # fmt: skip
    request = decode_chat_request(body(messages=messages))
    kinds = [type(m) for m in request.messages]
    assert kinds == [SystemMessage, DeveloperMessage, UserMessage, AssistantMessage, ToolMessage]
    assert isinstance(request.messages[2].content[1], ImagePart)
    assert isinstance(request.messages[1].content[0], TextPart)
    assert request.messages[3].tool_calls[0].function.name == "f"


@pytest.mark.parametrize(
    "choice", ["none", "auto", "required", {"type": "function", "function": {"name": "get_weather"}}]
)
def test_tool_choice_variants(choice):
    request = decode_chat_request(body(tools=[TOOL], tool_choice=choice))
    assert request.tool_choice == choice or isinstance(request.tool_choice, NamedToolChoice)


@pytest.mark.parametrize(
    "fmt",
    [{"type": "text"}, {"type": "json_object"}, {"type": "json_schema", "json_schema": {"name": "p", "schema": {}}}],
)
def test_response_format_variants(fmt):
    request = decode_chat_request(body(response_format=fmt))
    assert type(request.response_format).__name__.lower().startswith(fmt["type"].replace("_", ""))


def test_json_schema_format_keeps_schema():
    request = decode_chat_request(
        body(
            response_format={
                "type": "json_schema",
                "json_schema": {"name": "p", "strict": True, "schema": {"type": "object"}},
            }
        )
    )
    assert isinstance(request.response_format, JsonSchemaFormat)
    assert request.response_format.json_schema.schema == {"type": "object"}


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"temperature": 5}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role"),
        ({"messages": [{"role": "user"}]}, "messages[0].content"),
        ({"messages": []}, "messages"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"stop": ["ok", ""]}, "stop[1]"),
        ({"n": 2}, "n"),
        ({"stream_options": {"include_usage": True}}, "stream_options"),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"tools": [TOOL], "tool_choice": {"type": "function", "function": {"name": "other"}}}, "tool_choice"),
        ({"response_format": {"type": "xml"}}, "response_format.type"),
        ({"tools": [{"type": "function", "function": {"name": "bad name!"}}]}, "tools[0].function.name"),
    ],
)
def test_invalid_fields_name_the_param(fields, param):
    with pytest.raises(InvalidRequest) as caught:
        decode_chat_request(body(**fields))
    assert caught.value.param == param
    assert caught.value.error_type == "invalid_request"


def test_missing_model_names_param():
    with pytest.raises(InvalidRequest) as caught:
        decode_chat_request(b'{"messages": [{"role": "user", "content": "x"}]}')
    assert caught.value.param == "model"


@pytest.mark.parametrize("raw", [b"", b"   ", b"{not json", b'{"model": "m",', b'{"model": "\xff\xfe"}'])
def test_malformed_json(raw):
    with pytest.raises(InvalidJSON):
        decode_chat_request(raw)


def test_unknown_fields_are_ignored_and_never_forwarded():
    request = decode_chat_request(body(frobnicate=True, temperature=0.5, n=1))
    upstream = OpenAIEngine("e", "http://127.0.0.1:1", "upstream-name").upstream_body(request)
    sent = msgspec.json.decode(upstream)
    assert "frobnicate" not in sent
    assert sent["model"] == "upstream-name"
    assert not sent.get("stream") and "stream_options" not in sent  # one JSON answer
    assert sent["temperature"] == 0.5
    assert "tools" not in sent  # unset optional fields are omitted, not sent as null


@pytest.mark.parametrize("fields", [{"stream": True}, {"tools": [TOOL]}])
def test_streams_and_tool_requests_go_upstream_as_streams_with_usage(fields):
    request = decode_chat_request(body(**fields))
    sent = msgspec.json.decode(OpenAIEngine("e", "http://127.0.0.1:1", "u").upstream_body(request))
    assert sent["stream"] is True and sent["stream_options"] == {"include_usage": True}


def test_accumulates_text_and_usage():
    accumulator = Accumulator()
    for chunk in text_chunks("Hel", "lo"):
        accumulator.add(chunk)
    result = accumulator.result("public")
    assert result.model == "public"
    assert result.choices[0].message.content == "Hello"
    assert result.choices[0].finish_reason == "stop"
    assert result.usage.completion_tokens == 2


def test_accumulates_tool_call_deltas():
    accumulator = Accumulator()
    for chunk in tool_call_chunks("get_weather", ['{"ci', 'ty": "Paris"}']):
        accumulator.add(chunk)
    message = accumulator.result("m").choices[0].message
    assert message.content is None
    assert message.tool_calls[0].id == "call_1"
    assert msgspec.json.decode(message.tool_calls[0].function.arguments) == {"city": "Paris"}


def test_request_round_trips_through_encoding():
    request = decode_chat_request(body(tools=[TOOL], tool_choice="auto", seed=3, stop="END"))
    again = msgspec.json.decode(msgspec.json.encode(request), type=ChatCompletionRequest)
    assert again == request


def test_unset_optional_fields_are_not_sent_as_null():
    image = {"type": "image_url", "image_url": {"url": "data:,"}}
    request = decode_chat_request(body(messages=[{"role": "user", "content": [image]}]))
    sent = msgspec.json.decode(OpenAIEngine("e", "http://127.0.0.1:1", "u").upstream_body(request))
    assert sent["messages"] == [{"role": "user", "content": [image]}]
    tool = {"type": "function", "function": {"name": "f"}}
    request = decode_chat_request(body(tools=[tool], tool_choice={"type": "function", "function": {"name": "f"}}))
    sent = msgspec.json.decode(OpenAIEngine("e", "http://127.0.0.1:1", "u").upstream_body(request))
    assert sent["tools"] == [tool]  # `type` is kept even though it equals its default
    assert sent["tool_choice"] == {"function": {"name": "f"}, "type": "function"}


@pytest.mark.parametrize(
    ("schema", "problem"),
    [
        ({"type": "object", "properties": {"a": False}}, "at /properties/a: a `false` schema"),
        ({"anyOf": [{"type": "string"}, False]}, "at /anyOf/1: a `false` schema"),
        ({"type": "string", "enum": []}, "at /: an empty `enum`"),
        ({"type": "integer", "minimum": 5, "maximum": 1}, "`minimum` (5) is above `maximum` (1)"),
        ({"properties": {"s": {"type": "string", "minLength": 9, "maxLength": 2}}}, "at /properties/s: `minLength`"),
        ({"type": "integer", "enum": [2**70]}, "the integer 1180591620717411303424 is beyond 64 bits"),
    ],
)
def test_schemas_no_grammar_can_compile_are_400s(schema, problem):
    fmt = {"type": "json_schema", "json_schema": {"name": "s", "schema": schema}}
    with pytest.raises(InvalidRequest) as error:
        decode_chat_request(body(response_format=fmt))
    assert problem in str(error.value) and error.value.param == "response_format.json_schema.schema"
    tool = {"type": "function", "function": {"name": "f", "parameters": schema}}
    with pytest.raises(InvalidRequest) as error:
        decode_chat_request(body(tools=[tool]))
    assert error.value.param == "tools[0].function.parameters"


def test_usual_strict_schemas_pass():
    schema = {"type": "object", "additionalProperties": False, "required": ["a"], "unevaluatedProperties": False,
              "properties": {"a": {"type": "integer", "minimum": 0, "maximum": 10, "enum": [1, 2]},
                             "t": {"type": "array", "prefixItems": [{"type": "string"}], "items": False},
                             "n": {"not": {"type": "null"}}}}  # fmt: skip
    fmt = {"type": "json_schema", "json_schema": {"name": "s", "schema": schema, "strict": True}}
    assert decode_chat_request(body(response_format=fmt)).response_format is not None


def _chunks_from(kinds: list[str]) -> list:
    """Chunks in an order an engine may send them: "t" a text delta, "r" the role, "c" a tool-call delta,
    "f" the finish, "u" the usage, "o" a text delta of another completion id."""
    made = []
    for n, kind in enumerate(kinds):
        if kind == "t":
            made += text_chunks(f"w{n} ")[1:2]
        elif kind == "o":
            made.append(msgspec.structs.replace(text_chunks(f"o{n}")[1], id="other"))
        elif kind == "r":
            made += text_chunks()[:1]
        elif kind == "c":
            made += tool_call_chunks("f", ['{"a":', "1}"])[1:2]
        elif kind == "f":
            made += text_chunks()[-2:-1]
        else:
            made += text_chunks()[-1:]
    return made


def test_text_deltas_that_arrived_together_are_joined():
    chunks = _chunks_from(list("rtttcttfu"))
    merged = merge_text_chunks(chunks)
    texts = [(c.choices[0].delta.content if c.choices else None) for c in merged]
    assert texts == ["", "w1 w2 w3 ", None, "w5 w6 ", None, None]
    assert merged[0] is chunks[0] and merged[2] is chunks[4] and merged[-1] is chunks[-1]  # others untouched


def _is_plain(chunk) -> bool:
    choice = chunk.choices[0] if len(chunk.choices) == 1 else None
    return bool(choice and not (chunk.usage or choice.finish_reason or choice.delta.tool_calls or choice.delta.role))


def _text(chunks, id_: str) -> str:
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices and c.id == id_)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from("rtcfuo"), max_size=12))
def test_joining_keeps_the_text_and_every_other_chunk(kinds):
    chunks = _chunks_from(kinds)
    merged = merge_text_chunks(chunks)
    for id_ in ("chatcmpl-test", "other"):
        assert _text(merged, id_) == _text(chunks, id_)
    assert [c for c in merged if not _is_plain(c)] == [c for c in chunks if not _is_plain(c)]
    for a, b in itertools.pairwise(merged):
        assert not (_is_plain(a) and _is_plain(b) and a.id == b.id), "two joinable chunks left apart"
