"""OpenAI wire structs (msgspec) and the OpenAI error body.

A leaf module (with `protocol.schemas`): it imports nothing else of Sentrail, so `engines` and `rails` may use
these types.
Request structs ignore unknown fields (OpenAI clients send many); constraints live in the types, and
the checks that span several fields live in `ChatCompletionRequest.validate`.
"""

from __future__ import annotations

import re
import time
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta, Struct, field

from protocol.schemas import schema_problem

NonNegFloat = Annotated[float, Meta(ge=0)]
Temperature = Annotated[float, Meta(ge=0, le=2)]
TopP = Annotated[float, Meta(gt=0, le=1)]
Penalty = Annotated[float, Meta(ge=-2, le=2)]
PositiveInt = Annotated[int, Meta(ge=1)]
NonEmptyStr = Annotated[str, Meta(min_length=1)]
FunctionName = Annotated[str, Meta(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.\-]+$")]


class SentrailError(Exception):
    """Base of every error a client may see: `error_type` keys the gateway's one error table
    (gateway/errors.py) and `param` names the request field at fault, if any. Each package derives its
    own tree from it (gateway, engines, rails); this module is the leaf they all may import."""

    error_type = "internal_error"

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class RequestFieldError(ValueError):
    """A request that decodes but breaks a rule spanning fields; `param` names the offending field."""

    def __init__(self, message: str, param: str | None) -> None:
        super().__init__(message)
        self.param = param


# ---- content parts -------------------------------------------------------------------------------


class TextPart(Struct, tag_field="type", tag="text"):
    text: str


class ImageURL(Struct, omit_defaults=True):
    url: str
    detail: Literal["auto", "low", "high"] | None = None


class ImagePart(Struct, tag_field="type", tag="image_url"):
    image_url: ImageURL


class RefusalPart(Struct, tag_field="type", tag="refusal"):
    refusal: str


UserContent = str | list[TextPart | ImagePart]
TextContent = str | list[TextPart]
AssistantContent = str | list[TextPart | RefusalPart]


# ---- messages ------------------------------------------------------------------------------------


class FunctionCall(Struct):
    name: str
    arguments: str


class ToolCall(Struct):
    id: str
    function: FunctionCall
    type: Literal["function"] = "function"


class SystemMessage(Struct, tag_field="role", tag="system", omit_defaults=True):
    content: TextContent
    name: str | None = None


class DeveloperMessage(Struct, tag_field="role", tag="developer", omit_defaults=True):
    content: TextContent
    name: str | None = None


class UserMessage(Struct, tag_field="role", tag="user", omit_defaults=True):
    content: UserContent
    name: str | None = None


class AssistantMessage(Struct, tag_field="role", tag="assistant", omit_defaults=True):
    content: AssistantContent | None = None
    tool_calls: list[ToolCall] | None = None
    refusal: str | None = None
    name: str | None = None


class ToolMessage(Struct, tag_field="role", tag="tool", omit_defaults=True):
    content: TextContent
    tool_call_id: str


Message = SystemMessage | DeveloperMessage | UserMessage | AssistantMessage | ToolMessage


# ---- tools and response formats ------------------------------------------------------------------


class FunctionDefinition(Struct, omit_defaults=True):
    name: FunctionName
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class Tool(Struct):
    function: FunctionDefinition
    type: Literal["function"] = "function"


class NamedFunction(Struct):
    name: str


class NamedToolChoice(Struct):
    function: NamedFunction
    type: Literal["function"] = "function"


ToolChoice = Literal["none", "auto", "required"] | NamedToolChoice


class TextFormat(Struct, tag_field="type", tag="text"):
    pass


class JsonObjectFormat(Struct, tag_field="type", tag="json_object"):
    pass


class JsonSchema(Struct, omit_defaults=True):
    name: FunctionName
    schema: dict[str, Any] | None = None
    description: str | None = None
    strict: bool | None = None


class JsonSchemaFormat(Struct, tag_field="type", tag="json_schema"):
    json_schema: JsonSchema


ResponseFormat = TextFormat | JsonObjectFormat | JsonSchemaFormat


class StreamOptions(Struct, omit_defaults=True):
    include_usage: bool | None = None


# ---- the request ---------------------------------------------------------------------------------


class RequestLimits(Struct, frozen=True, forbid_unknown_fields=True):
    """What one request may hold (each message and part costs rails and engine time); a request over a
    limit is refused with a 400 naming it. Settings: `request_limits`."""

    max_messages: Annotated[int, Meta(ge=1)] = 2048
    max_content_parts: Annotated[int, Meta(ge=1)] = 4096  # text and image parts, over all messages
    max_tools: Annotated[int, Meta(ge=0)] = 128  # OpenAI's own limit
    max_depth: Annotated[int, Meta(ge=2, le=200)] = 32  # nesting of a tool's parameters or a response schema


DEFAULT_LIMITS = RequestLimits()


def depth(value: Any, limit: int) -> int:
    """How deeply `value` nests maps and lists, counted up to `limit + 1` (iterative: no recursion)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict | list):
            deepest = max(deepest, level)
            if deepest > limit:
                return deepest
            stack.extend((child, level + 1) for child in (item.values() if isinstance(item, dict) else item))
    return deepest


class ChatCompletionRequest(Struct, omit_defaults=True):
    """`POST /v1/chat/completions`. Unknown fields are ignored and never forwarded to an engine."""

    model: NonEmptyStr
    messages: Annotated[list[Message], Meta(min_length=1)]
    stream: bool = False
    stream_options: StreamOptions | None = None
    tools: list[Tool] | None = None
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormat | None = None
    temperature: Temperature | None = None
    top_p: TopP | None = None
    max_tokens: PositiveInt | None = None
    max_completion_tokens: PositiveInt | None = None
    stop: NonEmptyStr | Annotated[list[NonEmptyStr], Meta(max_length=4)] | None = None
    seed: int | None = None
    n: int | None = None
    presence_penalty: Penalty | None = None
    frequency_penalty: Penalty | None = None
    user: str | None = None
    metadata: dict[str, str] | None = None

    def validate(self, limits: RequestLimits = DEFAULT_LIMITS) -> None:
        """Rules that span fields, and the request limits; raises `RequestFieldError` naming the param."""
        self._within(limits)
        if self.n is not None and self.n != 1:
            raise RequestFieldError("Only n=1 is supported.", "n")
        if self.stream_options is not None and not self.stream:
            raise RequestFieldError("stream_options is only allowed when stream is true.", "stream_options")
        choice = self.tool_choice
        if choice is not None and choice != "none" and not self.tools:
            raise RequestFieldError("tool_choice requires tools to be specified.", "tool_choice")
        if isinstance(choice, NamedToolChoice) and choice.function.name not in self.tool_names():
            raise RequestFieldError(
                f"tool_choice names function {choice.function.name!r}, which is not in tools.", "tool_choice"
            )

    def _within(self, limits: RequestLimits) -> None:
        if len(self.messages) > limits.max_messages:
            raise RequestFieldError(f"Too many messages: {len(self.messages)} > max_messages={limits.max_messages}.",
                                    "messages")  # fmt: skip
        parts = sum(len(m.content) for m in self.messages if isinstance(getattr(m, "content", None), list))
        if parts > limits.max_content_parts:
            raise RequestFieldError(
                f"Too many content parts: {parts} > max_content_parts={limits.max_content_parts}.", "messages"
            )
        tools = self.tools or []
        if len(tools) > limits.max_tools:
            raise RequestFieldError(f"Too many tools: {len(tools)} > max_tools={limits.max_tools}.", "tools")
        schemas = [(f"tools[{i}].function.parameters", t.function.parameters) for i, t in enumerate(tools)]
        if isinstance(self.response_format, JsonSchemaFormat):
            schemas.append(("response_format.json_schema.schema", self.response_format.json_schema.schema))
        for param, schema in schemas:
            if schema is not None and depth(schema, limits.max_depth) > limits.max_depth:
                raise RequestFieldError(f"{param} nests deeper than max_depth={limits.max_depth}.", param)
            if schema is not None and (problem := schema_problem(schema)):
                raise RequestFieldError(f"{param} cannot be compiled into a grammar: {problem}.", param)

    def tool_names(self) -> set[str]:
        return {t.function.name for t in self.tools or ()}

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


# ---- responses -----------------------------------------------------------------------------------


class Usage(Struct):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


class ResponseMessage(Struct):
    content: str | None = None
    tool_calls: list[ToolCall] | None = None
    refusal: str | None = None
    role: Literal["assistant"] = "assistant"


class Choice(Struct):
    message: ResponseMessage
    finish_reason: str | None
    index: int = 0
    logprobs: None = None


class ChatCompletion(Struct):
    id: str
    model: str
    choices: list[Choice]
    usage: Usage | None = None
    created: int = field(default_factory=lambda: int(time.time()))
    object: Literal["chat.completion"] = "chat.completion"
    system_fingerprint: str | None = None
    sentrail: dict[str, Any] | None = None  # extension: rail decisions of this step, when any


class FunctionCallDelta(Struct, omit_defaults=True):
    name: str | None = None
    arguments: str | None = None


class ToolCallDelta(Struct, omit_defaults=True):
    index: int
    id: str | None = None
    type: Literal["function"] | None = None
    function: FunctionCallDelta | None = None


class Delta(Struct, omit_defaults=True):
    role: Literal["assistant"] | None = None
    content: str | None = None
    tool_calls: list[ToolCallDelta] | None = None
    refusal: str | None = None


class ChunkChoice(Struct):
    delta: Delta
    finish_reason: str | None = None
    index: int = 0
    logprobs: None = None


class ChatCompletionChunk(Struct):
    id: str
    model: str
    choices: list[ChunkChoice]
    created: int = field(default_factory=lambda: int(time.time()))
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    usage: Usage | None = None


def merge_text_chunks(chunks: list[ChatCompletionChunk]) -> list[ChatCompletionChunk]:
    """Chunks that arrived together, with each run of plain text deltas (one choice, text only: no role,
    tool call, refusal, finish or usage) of one completion joined into one chunk. A client reads the same
    text; a gateway that fell behind its engine then passes one chunk through its rails instead of many."""
    if len(chunks) < 2:
        return chunks
    merged: list[ChatCompletionChunk] = []
    run: list[ChatCompletionChunk] = []  # plain text chunks in a row, of one completion and choice
    for chunk in chunks:
        plain = _plain_text(chunk)
        if plain and run and _same_choice(run[0], chunk):
            run.append(chunk)
            continue
        _join(run, merged)
        run = [chunk] if plain else []
        if not plain:
            merged.append(chunk)
    _join(run, merged)
    return merged


def _join(run: list[ChatCompletionChunk], merged: list[ChatCompletionChunk]) -> None:
    """A run of plain text chunks as one (its text joined once), onto `merged`."""
    if len(run) == 1:
        merged.append(run[0])
    elif run:
        first = run[0]
        delta = Delta(content="".join(chunk.choices[0].delta.content or "" for chunk in run))
        merged.append(msgspec.structs.replace(first, choices=[ChunkChoice(delta, None, first.choices[0].index)]))


def _same_choice(a: ChatCompletionChunk, b: ChatCompletionChunk) -> bool:
    return a.id == b.id and a.choices[0].index == b.choices[0].index


def _plain_text(chunk: ChatCompletionChunk) -> bool:
    if len(chunk.choices) != 1 or chunk.usage is not None:
        return False
    choice = chunk.choices[0]
    delta = choice.delta
    return choice.finish_reason is None and delta.role is None and delta.tool_calls is None and delta.refusal is None


class Model(Struct):
    id: str
    created: int
    owned_by: str = "sentrail"
    object: Literal["model"] = "model"


class ModelList(Struct):
    data: list[Model]
    object: Literal["list"] = "list"


# ---- errors --------------------------------------------------------------------------------------


class ErrorDetail(Struct):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorBody(Struct):
    error: ErrorDetail


_MISSING = re.compile(r"missing required field `([^`]+)`")


def validation_param(error: msgspec.ValidationError) -> str | None:
    """The request field a msgspec error points at: '... - at `$.messages[0].role`' -> 'messages[0].role'."""
    text = str(error)
    location = ""
    start = text.rfind(" - at `$")
    if start >= 0:
        location = text[start + len(" - at `$") :].rstrip("`")
    missing = _MISSING.search(text)
    if missing:
        location = f"{location}.{missing.group(1)}"
    return location.lstrip(".") or None


def validation_message(error: msgspec.ValidationError) -> str:
    """The human part of a msgspec error, without the location suffix."""
    text = str(error)
    cut = text.rfind(" - at `$")
    return text[:cut] if cut >= 0 else text


class HealthResponse(Struct):
    message: str
    models: dict[str, bool] | None = None
    store: bool | None = None
    object: str = "health.response"
