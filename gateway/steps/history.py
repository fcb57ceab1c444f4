"""History integrity: which messages of a request this session has already seen and judged.

Clients resend the whole conversation every step, and nothing stops them from editing or inventing an
earlier turn. Sentrail therefore never trusts a message for its position. Per session it keeps a
fingerprint of every message that passed its inbound rails (with the masked message the engine saw,
when a rail masked it) and of every assistant text it emitted; the tool calls it emitted are the
session's `calls`. A request's messages are then:

  seen        its fingerprint is stored: not judged again; a masked one is replaced by its masked version
              (the client resends what it typed, the engine must keep seeing what the rails released)
  new         anything else the client sent, at any position (the whole history of a new session, an
              earlier turn edited or made up): judged by the input or tool_result rails, recorded
  emitted     an assistant turn whose text and tool calls Sentrail emitted in this session
  unverified  an assistant turn Sentrail never emitted here: judged like input, flagged and labelled
              (`unverified_turns` in tools.yaml: label, or block), recorded so it is flagged once

The cost of a step is the new text's rails plus a fingerprint (SHA-256) per message and one HMGET in the
round trip that loads the session: already judged history is never re-checked.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import msgspec

from gateway.stores.sessions import ToolCallRecord
from protocol.openai import AssistantMessage, ChatCompletionRequest, Message, ToolCall
from rails.tools.decide import canonical_arguments

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(Message)
MAX_REPLACEMENT_BYTES = 256 * 1024  # a masked message larger than this is judged again instead of stored


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:32]


def message_key(message: Message) -> str:
    """A message as the client sent it (its decoded form: JSON spacing and key order do not matter)."""
    return "m:" + _digest(_encoder.encode(message))


def text_key(text: str) -> str:
    """An assistant text Sentrail emitted (surrounding whitespace does not matter)."""
    return "a:" + _digest(text.strip().encode())


def assistant_text(message: AssistantMessage) -> str:
    content = message.content
    if content is None or isinstance(content, str):
        return content or ""
    return "".join(getattr(part, "text", "") or getattr(part, "refusal", "") for part in content)


@dataclass
class History:
    """One request's messages against what the session has seen."""

    request: ChatCompletionRequest
    keys: list[str] = field(default_factory=list)  # per message: its fingerprint
    texts: dict[int, str] = field(default_factory=dict)  # assistant message index -> its text's key
    fresh: list[int] = field(default_factory=list)  # judged and recorded in this step, in order
    unverified: list[int] = field(default_factory=list)  # assistant turns Sentrail never emitted here

    @classmethod
    def of(cls, request: ChatCompletionRequest) -> History:
        history = cls(request, [message_key(m) for m in request.messages])
        for index, message in enumerate(request.messages):
            if isinstance(message, AssistantMessage) and (text := assistant_text(message).strip()):
                history.texts[index] = text_key(text)
        return history

    def lookups(self) -> list[str]:
        """The fingerprints to read from the session (one HMGET)."""
        return list(dict.fromkeys([*self.keys, *self.texts.values()]))

    def resolve(self, seen: dict[str, bytes], calls: dict[str, ToolCallRecord]) -> ChatCompletionRequest:
        """Sort the messages given the session's stored fingerprints (`seen`: key -> masked message or
        b"") and its emitted calls; return the request with every seen message as the engine saw it."""
        messages = list(self.request.messages)
        for index, message in enumerate(messages):
            stored = seen.get(self.keys[index])
            if stored is not None:
                if stored:
                    try:
                        messages[index] = _decoder.decode(stored)
                    except msgspec.DecodeError:  # unreadable: judge it again rather than trust it
                        self.fresh.append(index)
                continue
            if isinstance(message, AssistantMessage):
                if self._emitted(index, message, seen, calls):
                    continue
                self.unverified.append(index)
            self.fresh.append(index)
        self.request = msgspec.structs.replace(self.request, messages=messages)
        return self.request

    def _emitted(
        self, index: int, message: AssistantMessage, seen: dict[str, bytes], calls: dict[str, ToolCallRecord]
    ) -> bool:
        if index in self.texts and self.texts[index] not in seen:
            return False
        return all(_emitted_call(call, calls.get(call.id)) for call in message.tool_calls or ())

    def records(self, judged: ChatCompletionRequest) -> dict[str, str]:
        """What to store for the fresh messages once they passed: fingerprint -> "" (released as sent)
        or the masked message (`judged` holds the messages as the rails released them)."""
        out = {}
        for index in self.fresh:
            original, released = self.request.messages[index], judged.messages[index]
            replacement = "" if released == original else _encoder.encode(released).decode()
            if len(replacement) <= MAX_REPLACEMENT_BYTES:
                out[self.keys[index]] = replacement
        return out


def _emitted_call(call: ToolCall, record: ToolCallRecord | None) -> bool:
    """The session emitted this call to the client: same id, tool and arguments, and it was released."""
    if record is None or record.decision != "allow" or record.name != call.function.name:
        return False
    return canonical_arguments(record.arguments) == canonical_arguments(call.function.arguments)
