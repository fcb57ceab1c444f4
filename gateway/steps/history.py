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

The cost of a step is the new text's rails, a fingerprint (SHA-256) per message, and reads in the round
trip that loads the session: the chain head of the messages before the last assistant turn (a client
that resent the previous request unchanged needs nothing more for them), the fingerprints after it, and
the session's masked messages. Only a history that was edited costs a second read, of every fingerprint.
Already judged history is never re-checked.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import msgspec
import structlog

from gateway.steps.tool_guard import PolicyViolation
from gateway.stores.sessions import Lookups, PendingStep, ToolCallRecord
from protocol.openai import AssistantMessage, ChatCompletionRequest, Message, ToolCall
from rails.tools.config import UnverifiedTurns
from rails.tools.decide import canonical_arguments

log = structlog.get_logger("sentrail.history")

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
    split: int = 0  # the last assistant turn's index (0: none): the previous request ended before it
    prefix: str | None = None  # the fingerprint of the messages before `split` (the previous request's)
    head: str = ""  # the fingerprint of all the messages (recorded: the next request's prefix)
    texts: dict[int, str] = field(default_factory=dict)  # assistant message index -> its text's key
    fresh: list[int] = field(default_factory=list)  # judged and recorded in this step, in order
    unverified: list[int] = field(default_factory=list)  # assistant turns Sentrail never emitted here

    @classmethod
    def of(cls, request: ChatCompletionRequest) -> History:
        history = cls(request, [message_key(m) for m in request.messages])
        messages = request.messages
        history.split = max((i for i, m in enumerate(messages) if isinstance(m, AssistantMessage)), default=0)
        running = hashlib.sha256()
        for index, message in enumerate(messages):
            running.update(history.keys[index].encode())
            if index == history.split - 1:
                history.prefix = "c:" + running.hexdigest()[:32]
            if isinstance(message, AssistantMessage) and (text := assistant_text(message).strip()):
                history.texts[index] = text_key(text)
        history.head = "c:" + running.hexdigest()[:32]
        return history

    def lookups(self) -> Lookups:
        split = self.split
        near = [*self.keys[split:], *(key for index, key in self.texts.items() if index >= split)]
        far = [*self.keys[:split], *(key for index, key in self.texts.items() if index < split)]
        return Lookups(self.prefix, list(dict.fromkeys(near)), list(dict.fromkeys(far)))

    def resolve(
        self, seen: set[str], masked: dict[str, bytes], calls: dict[str, ToolCallRecord]
    ) -> ChatCompletionRequest:
        """Sort the messages given the session's stored fingerprints (`seen`, with the chain heads),
        the masked messages the engine saw (`masked`) and the session's emitted calls; return the request
        with every seen message as the engine saw it."""
        messages = list(self.request.messages)
        known = self.split if self.prefix in seen else 0
        for index, message in enumerate(messages):
            if index < known or self.keys[index] in seen:
                stored = masked.get(self.keys[index])
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

    def _emitted(self, index: int, message: AssistantMessage, seen: set[str], calls: dict[str, ToolCallRecord]) -> bool:
        if index in self.texts and self.texts[index] not in seen:
            return False
        return all(_emitted_call(call, calls.get(call.id)) for call in message.tool_calls or ())

    def flag(self, pending: PendingStep, spec: UnverifiedTurns) -> None:
        """Assistant turns the client sent that Sentrail never emitted in this session: flagged, labelled
        (`unverified_turns` in the tool policy), or refused when the policy says block."""
        if not self.unverified:
            return
        pending.flags += [f"unverified_assistant_turn:messages[{index}]" for index in self.unverified]
        pending.new_labels.add(spec.label)
        report = log.info if pending.is_new else log.warning  # expected of a new session's history; not later
        report("unverified_assistant_turns", count=len(self.unverified), new_session=pending.is_new)
        if spec.action == "block":
            raise PolicyViolation(
                "The request holds an assistant turn this session never produced; send the conversation as "
                "Sentrail returned it, under its session id.",
                f"messages[{self.unverified[0]}]",
            )

    def records(self, judged: ChatCompletionRequest) -> tuple[dict[str, str], dict[str, str]]:
        """What to store once the fresh messages passed: the fingerprints seen (theirs and the request's
        chain head) and the masked ones -> the message as the rails released it (`judged`)."""
        seen = {self.keys[index]: "" for index in self.fresh}
        seen[self.head] = ""
        masked = {}
        for index in self.fresh:
            original, released = self.request.messages[index], judged.messages[index]
            if released != original and len(replacement := _encoder.encode(released)) <= MAX_REPLACEMENT_BYTES:
                masked[self.keys[index]] = replacement.decode()
            elif released != original:  # too large to keep masked: judged again when resent
                del seen[self.keys[index]]
                seen.pop(self.head, None)
        return seen, masked


def _emitted_call(call: ToolCall, record: ToolCallRecord | None) -> bool:
    """The session emitted this call to the client: same id, tool and arguments, and it was released."""
    if record is None or record.decision != "allow" or record.name != call.function.name:
        return False
    return canonical_arguments(record.arguments) == canonical_arguments(call.function.arguments)
