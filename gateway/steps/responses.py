"""The Responses API on the same step orchestration as chat completions.

A Responses request is translated into a chat request (instructions -> system message, input items ->
messages, `previous_response_id` -> the stored conversation before them), run through `ChatService`,
and the folded result is translated back into output items. Stored responses live in Redis under the
tenant, with the chat messages of their whole chain, so a chain continues server-side.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator
from typing import TYPE_CHECKING, Any, Literal

import msgspec
import redis.asyncio as aioredis

from gateway.errors import GatewayError, InvalidRequest, describe
from gateway.steps.streaming import Accumulator
from protocol.openai import (
    DEFAULT_LIMITS,
    AssistantMessage,
    ChatCompletionChunk,
    ChatCompletionRequest,
    FunctionCall,
    FunctionDefinition,
    JsonObjectFormat,
    JsonSchema,
    JsonSchemaFormat,
    Message,
    NamedFunction,
    NamedToolChoice,
    PositiveInt,
    RequestLimits,
    SystemMessage,
    TextFormat,
    Tool,
    ToolCall,
    ToolMessage,
    TopP,
    UserMessage,
)

if TYPE_CHECKING:
    from gateway.steps.chat import StepRun

_message_decoder = msgspec.json.Decoder(list[Message])
_encoder = msgspec.json.Encoder()


# chat finish_reason -> Responses `incomplete_details.reason`
INCOMPLETE = {"length": "max_output_tokens", "content_filter": "content_filter"}


class ResponseNotFound(GatewayError):
    error_type = "response_not_found"

    def __init__(self, response_id: str, param: str = "response_id") -> None:
        super().__init__(f"No response {response_id!r} for this tenant.", param)


class FunctionTool(msgspec.Struct, tag_field="type", tag="function"):
    name: str
    parameters: dict[str, Any] | None = None
    description: str | None = None
    strict: bool | None = None


class NamedFunctionChoice(msgspec.Struct):
    name: str
    type: Literal["function"] = "function"


class TextFormatSpec(msgspec.Struct):
    type: Literal["text", "json_object", "json_schema"] = "text"
    name: str | None = None
    schema: dict[str, Any] | None = None
    strict: bool | None = None


class TextOptions(msgspec.Struct):
    format: TextFormatSpec = msgspec.field(default_factory=TextFormatSpec)


class ResponsesRequest(msgspec.Struct, omit_defaults=True):
    model: str
    input: str | list[dict[str, Any]]
    instructions: str | None = None
    tools: list[FunctionTool] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedFunctionChoice | None = None
    parallel_tool_calls: bool | None = None
    stream: bool = False
    store: bool = True
    previous_response_id: str | None = None
    temperature: float | None = None
    top_p: TopP | None = None
    max_output_tokens: PositiveInt | None = None
    metadata: dict[str, str] | None = None
    text: TextOptions | None = None


class StoredResponse(msgspec.Struct):
    response: dict[str, Any]
    messages: list[Message]  # the chain's chat messages, this turn's output included
    session_id: str


# ---- Responses -> chat ---------------------------------------------------------------------------


def input_messages(items: str | list[dict[str, Any]]) -> list[Message]:
    """Input items -> chat messages; consecutive function calls become one assistant turn."""
    if isinstance(items, str):
        return [UserMessage(items)]
    messages: list[Message] = []
    for index, item in enumerate(items):
        kind = item.get("type", "message")
        if kind == "message":
            messages.append(_message(item, index))
        elif kind == "function_call":
            call = ToolCall(id=_str(item, "call_id", index), function=FunctionCall(
                name=_str(item, "name", index), arguments=_str(item, "arguments", index)))  # fmt: skip
            last = messages[-1] if messages else None
            if isinstance(last, AssistantMessage) and last.tool_calls is not None and last.content is None:
                last.tool_calls.append(call)
            else:
                messages.append(AssistantMessage(tool_calls=[call]))
        elif kind == "function_call_output":
            output = item.get("output")
            text = output if isinstance(output, str) else _encoder.encode(output).decode()
            messages.append(ToolMessage(content=text, tool_call_id=_str(item, "call_id", index)))
        else:
            raise InvalidRequest(f"Input items of type {kind!r} are not supported.", f"input[{index}].type")
    return messages


def _str(item: dict[str, Any], field: str, index: int) -> str:
    value = item.get(field)
    if not isinstance(value, str):
        raise InvalidRequest(f"Expected a string for '{field}'.", f"input[{index}].{field}")
    return value


def _message(item: dict[str, Any], index: int) -> Message:
    role, content = item.get("role"), item.get("content")
    if isinstance(content, list):
        parts = []
        for part in content:
            kind = part.get("type") if isinstance(part, dict) else None
            if kind in ("input_text", "output_text"):
                parts.append({"type": "text", "text": part.get("text")})
            elif kind == "input_image":
                parts.append({"type": "image_url", "image_url": {"url": part.get("image_url")}})
            else:
                raise InvalidRequest(f"Unsupported content part {kind!r}.", f"input[{index}].content")
        content = parts
    try:
        return _message_decoder.decode(_encoder.encode([{"role": role, "content": content}]))[0]
    except msgspec.ValidationError as exc:
        raise InvalidRequest(f"Invalid message item: {exc}", f"input[{index}]") from None


def to_chat(
    request: ResponsesRequest, history: list[Message], limits: RequestLimits = DEFAULT_LIMITS
) -> ChatCompletionRequest:
    messages: list[Message] = [SystemMessage(request.instructions)] if request.instructions else []
    messages += history + input_messages(request.input)
    if not messages:
        raise InvalidRequest("input must not be empty.", "input")
    choice: Any = request.tool_choice
    if isinstance(choice, NamedFunctionChoice):
        choice = NamedToolChoice(NamedFunction(choice.name))
    tools = [Tool(FunctionDefinition(t.name, t.description, t.parameters, t.strict)) for t in request.tools or ()]
    chat = ChatCompletionRequest(
        model=request.model, messages=messages, tools=tools or None, tool_choice=choice,
        parallel_tool_calls=request.parallel_tool_calls, temperature=request.temperature, top_p=request.top_p,
        max_completion_tokens=request.max_output_tokens, metadata=request.metadata,
        response_format=_format(request.text), stream=request.stream,
    )  # fmt: skip
    try:
        msgspec.json.decode(_encoder.encode(chat), type=ChatCompletionRequest).validate(limits)
    except msgspec.ValidationError as exc:
        raise InvalidRequest(f"Invalid request: {exc}") from None
    except ValueError as exc:
        raise InvalidRequest(str(exc), getattr(exc, "param", None)) from None
    return chat


def _format(text: TextOptions | None) -> Any:
    spec = text.format if text else None
    if spec is None or spec.type == "text":
        return TextFormat() if spec else None
    if spec.type == "json_object":
        return JsonObjectFormat()
    return JsonSchemaFormat(JsonSchema(name=spec.name or "output", schema=spec.schema, strict=spec.strict))


# ---- chat -> Responses ---------------------------------------------------------------------------


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


def output_items(accumulator: Accumulator, message_id: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    text = "".join(accumulator.content)
    if text or not accumulator.calls:
        items.append(message_item(message_id, text))
    items += [function_call_item(c.id, c.function.name, c.function.arguments) for c in accumulator.tool_calls()]
    return items


def message_item(item_id: str, text: str, status: str = "completed") -> dict[str, Any]:
    content = [{"type": "output_text", "text": text, "annotations": []}] if status == "completed" else []
    return {"type": "message", "id": item_id, "status": status, "role": "assistant", "content": content}


def function_call_item(call_id: str, name: str, arguments: str, status: str = "completed") -> dict[str, Any]:
    return {"type": "function_call", "id": f"fc_{call_id}", "call_id": call_id, "name": name,
            "arguments": arguments, "status": status}  # fmt: skip


def response_object(
    response_id: str, request: ResponsesRequest, status: str, output: list[dict[str, Any]], usage: Any = None
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": response_id, "object": "response", "created_at": int(time.time()), "status": status,
        "model": request.model, "output": output, "instructions": request.instructions,
        "previous_response_id": request.previous_response_id, "store": request.store,
        "tools": [msgspec.to_builtins(t) for t in request.tools or ()],
        "tool_choice": msgspec.to_builtins(request.tool_choice) if request.tool_choice else "auto",
        "parallel_tool_calls": request.parallel_tool_calls is not False, "temperature": request.temperature,
        "top_p": request.top_p, "max_output_tokens": request.max_output_tokens, "metadata": request.metadata or {},
        "text": msgspec.to_builtins(request.text or TextOptions()), "error": None, "incomplete_details": None,
        "usage": None,
    }  # fmt: skip
    if usage is not None:
        body["usage"] = {
            "input_tokens": usage.prompt_tokens, "output_tokens": usage.completion_tokens,
            "total_tokens": usage.total_tokens, "output_tokens_details": {"reasoning_tokens": 0},
            "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
        }  # fmt: skip
    return body


def assistant_turn(accumulator: Accumulator) -> AssistantMessage:
    text = "".join(accumulator.content)
    return AssistantMessage(content=text or None, tool_calls=accumulator.tool_calls() or None)


# ---- the store -----------------------------------------------------------------------------------


class ResponseStore:
    def __init__(self, redis: aioredis.Redis, ttl_s: int) -> None:
        self.redis = redis
        self.ttl_s = ttl_s

    @staticmethod
    def _key(tenant: str, response_id: str) -> str:
        return f"sentrail:tenant:{tenant}:response:{response_id}"

    async def save(self, tenant: str, stored: StoredResponse) -> None:
        await self.redis.set(self._key(tenant, stored.response["id"]), _encoder.encode(stored), ex=self.ttl_s)

    async def get(self, tenant: str, response_id: str, param: str = "response_id") -> StoredResponse:
        raw = await self.redis.get(self._key(tenant, response_id))
        if raw is None:
            raise ResponseNotFound(response_id, param)
        return msgspec.json.decode(raw, type=StoredResponse)

    async def deletion(self, tenant: str, response_id: str) -> list[list[str]]:
        """The command that deletes the response, for the audit log to apply with the deletion's record."""
        key = self._key(tenant, response_id)
        if not await self.redis.exists(key):
            raise ResponseNotFound(response_id)
        return [["DEL", key]]


# ---- the event stream ----------------------------------------------------------------------------


class ResponseRun:
    """One Responses turn: renders the step's chunks as the Responses event stream (or folds them),
    then stores the finished response with its chain's messages when `store` is on."""

    def __init__(self, store: ResponseStore, request: ResponsesRequest, chat: ChatCompletionRequest, tenant: str,
                 session_id: str) -> None:  # fmt: skip
        self.store = store
        self.request = request
        self.chat = chat
        self.tenant = tenant
        self.session_id = session_id
        self.id = new_id("resp")
        self.message_id = new_id("msg")
        self._sequence = 0

    async def finish(self, accumulator: Accumulator) -> dict[str, Any]:
        reason = INCOMPLETE.get(accumulator.finish_reason or "")
        body = response_object(self.id, self.request, "incomplete" if reason else "completed",
                               output_items(accumulator, self.message_id), accumulator.usage)  # fmt: skip
        if reason:
            body["incomplete_details"] = {"reason": reason}
        if self.request.store:
            messages = [*self.chat.messages, assistant_turn(accumulator)]
            if self.request.instructions:  # instructions apply to one turn; they are not carried along
                messages = messages[1:]
            await self.store.save(self.tenant, StoredResponse(body, messages, self.session_id))
        return body

    def event(self, kind: str, **data: Any) -> bytes:
        payload = {"type": kind, "sequence_number": self._sequence, **data}
        self._sequence += 1
        return b"event: " + kind.encode() + b"\ndata: " + _encoder.encode(payload) + b"\n\n"

    def error_event(self, exc: BaseException) -> bytes:
        error_type, message, param = describe(exc)
        return self.event("error", code=error_type, message=message, param=param)

    async def render(self, step: StepRun, chunks: AsyncIterator[ChatCompletionChunk]) -> AsyncGenerator[bytes, None]:
        """`Renderer` for `ChatService.open_stream`: created/in_progress only once the engine answered."""
        first = await anext(chunks, None)
        yield self.event("response.created", response=response_object(self.id, self.request, "in_progress", []))
        yield self.event("response.in_progress", response=response_object(self.id, self.request, "in_progress", []))
        items = _ItemTracker(self)
        if first is not None:
            for event in items.feed(first):
                yield event
        async for chunk in chunks:
            for event in items.feed(chunk):
                yield event
        for event in items.close():
            yield event
        yield self.event("response.completed", response=await self.finish(step.accumulator))


class _ItemTracker:
    """Opens, feeds and closes output items as deltas arrive (text message, then function calls)."""

    def __init__(self, run: ResponseRun) -> None:
        self.run = run
        self.index = 0
        self.text: list[str] | None = None  # None: no message item open
        self.text_index = 0
        self.calls: dict[int, tuple[int, str, str, list[str]]] = {}  # delta index -> output index, id, name, args

    def feed(self, chunk: ChatCompletionChunk) -> list[bytes]:
        events: list[bytes] = []
        ev, mid = self.run.event, self.run.message_id
        for choice in chunk.choices:
            delta = choice.delta
            if delta.content:
                if self.text is None:
                    self.text, self.text_index = [], self.index
                    self.index += 1
                    events.append(ev("response.output_item.added", output_index=self.text_index,
                                     item=message_item(mid, "", "in_progress")))  # fmt: skip
                    part = {"type": "output_text", "text": "", "annotations": []}
                    events.append(ev("response.content_part.added", item_id=mid, output_index=self.text_index,
                                     content_index=0, part=part))  # fmt: skip
                self.text.append(delta.content)
                events.append(ev("response.output_text.delta", item_id=mid, output_index=self.text_index,
                                 content_index=0, delta=delta.content, logprobs=[]))  # fmt: skip
            for call in delta.tool_calls or ():
                if call.index not in self.calls:
                    name = call.function.name if call.function and call.function.name else ""
                    self.calls[call.index] = (self.index, call.id or "", name, [])
                    events.append(ev("response.output_item.added", output_index=self.index,
                                     item=function_call_item(call.id or "", name, "", "in_progress")))  # fmt: skip
                    self.index += 1
                output_index, call_id, _, arguments = self.calls[call.index]
                if call.function and call.function.arguments:
                    arguments.append(call.function.arguments)
                    events.append(ev("response.function_call_arguments.delta", item_id=f"fc_{call_id}",
                                     output_index=output_index, delta=call.function.arguments))  # fmt: skip
        return events

    def close(self) -> list[bytes]:
        events: list[bytes] = []
        ev, mid = self.run.event, self.run.message_id
        if self.text is not None:
            text = "".join(self.text)
            part = {"type": "output_text", "text": text, "annotations": []}
            events += [
                ev("response.output_text.done", item_id=mid, output_index=self.text_index, content_index=0,
                   text=text, logprobs=[]),
                ev("response.content_part.done", item_id=mid, output_index=self.text_index, content_index=0, part=part),
                ev("response.output_item.done", output_index=self.text_index, item=message_item(mid, text)),
            ]  # fmt: skip
        for output_index, call_id, name, arguments in self.calls.values():
            joined = "".join(arguments)
            events += [
                ev("response.function_call_arguments.done", item_id=f"fc_{call_id}", output_index=output_index,
                   name=name, arguments=joined),
                ev("response.output_item.done", output_index=output_index,
                   item=function_call_item(call_id, name, joined)),
            ]  # fmt: skip
        return events
