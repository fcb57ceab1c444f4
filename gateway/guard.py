"""Inbound rails on one step: the `input` stage on new system/developer/user messages and the
`tool_result` stage on new tool results, before the model (or the session record) sees them.

A block raises `ContentFiltered` (400, code `content_filter`, naming the rail, its reason and the
message); a mask replaces the text, so the engine only ever sees the masked version.
"""

from __future__ import annotations

import msgspec

from rails.base import Stage
from rails.pipeline import Decision, RailPipeline

from .errors import GatewayError
from .protocol import AssistantMessage, ChatCompletionRequest, TextPart, ToolMessage


class ContentFiltered(GatewayError):
    error_type = "content_filter"


class Guard:
    def __init__(self, pipeline: RailPipeline) -> None:
        self.pipeline = pipeline

    async def inbound(self, request: ChatCompletionRequest) -> tuple[ChatCompletionRequest, list[Decision]]:
        messages = list(request.messages)
        start = next((i + 1 for i in range(len(messages) - 1, -1, -1) if isinstance(messages[i], AssistantMessage)), 0)
        decisions: list[Decision] = []
        for index in range(start, len(messages)):
            message = messages[index]
            stage = Stage.TOOL_RESULT if isinstance(message, ToolMessage) else Stage.INPUT
            if not self.pipeline.has(stage):
                continue
            content = message.content
            if isinstance(content, str):
                checked = await self._check(stage, content, index, decisions)
                if checked != content:
                    messages[index] = msgspec.structs.replace(message, content=checked)
            elif isinstance(content, list):
                parts = list(content)
                for part_index, part in enumerate(parts):
                    if isinstance(part, TextPart):
                        checked = await self._check(stage, part.text, index, decisions)
                        parts[part_index] = TextPart(checked)
                messages[index] = msgspec.structs.replace(message, content=parts)
        if not decisions:
            return request, decisions
        return msgspec.structs.replace(request, messages=messages), decisions

    async def _check(self, stage: Stage, text: str, index: int, decisions: list[Decision]) -> str:
        result = await self.pipeline.run(stage, text)
        decisions.extend(result.decisions)
        if result.blocked is not None:
            what = "tool result" if stage == Stage.TOOL_RESULT else "prompt"
            raise ContentFiltered(
                f"The {what} was blocked by rail {result.blocked.rail}: {result.blocked.reason}", f"messages[{index}]"
            )
        return result.content
