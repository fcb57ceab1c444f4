"""Inbound rails on one step: the `input` stage on new system/developer/user messages and the
`tool_result` stage on new tool results, before the model (or the session record) sees them.

A block raises `ContentFiltered` (400, code `content_filter`, naming the rail, its reason and the
message); a mask replaces the text, so the engine only ever sees the masked version.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from collections.abc import AsyncGenerator, AsyncIterator, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import msgspec
import structlog
from opentelemetry.trace import Tracer

from gateway.errors import GatewayError
from protocol.openai import (
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChunkChoice,
    Delta,
    TextPart,
    ToolMessage,
)
from rails.base import Stage
from rails.builtin.nemo import ModelResolver
from rails.config import RailsConfigError, load_rails, referenced_files
from rails.pipeline import Decision, RailPipeline, Released, StageResult

log = structlog.get_logger("sentrail.rails")
SLICE_S = 0.002  # the longest the inbound rails run before the event loop gets a turn


class ContentFiltered(GatewayError):
    error_type = "content_filter"

    def __init__(self, message: str, param: str | None, decisions: list[Decision]) -> None:
        super().__init__(message, param)
        self.decisions = decisions  # what the rails decided on this step, the block last


@dataclass(frozen=True)
class RailSet:
    """One loaded rails file: its pipeline, settings and version (SHA-256 of the file, shortened)."""

    pipeline: RailPipeline
    refusal: str = "I can't help with that."
    window: int = 64
    overlap: int = 128
    frontier: bool = True  # `streaming.frontier`: release what no rail can still change (else fixed windows)
    version: str = ""
    files: dict[str, str] = field(default_factory=dict)  # relative path -> SHA-256, for the audit log


def load_rail_set(path: Path, tracer: Tracer | None = None, resolve: ModelResolver | None = None) -> RailSet:
    """Raises `RailsConfigError` listing every problem with file:line. The version is a SHA-256 over
    the rails file and every NeMo config file it uses."""
    config, rails = load_rails(path, resolve)
    digest = hashlib.sha256()
    files = {}
    for file in referenced_files(path, config):
        name, content = os.path.relpath(file.resolve(), path.parent.resolve()), file.read_bytes()
        digest.update(f"{name}\0".encode())
        digest.update(content)
        files[name] = hashlib.sha256(content).hexdigest()
    version = digest.hexdigest()[:16]
    streaming = config.streaming
    pipeline = RailPipeline(rails, tracer, version)
    pipeline.stream(Stage.OUTPUT)  # the output rails build their stream patterns now, not on the first stream
    return RailSet(pipeline, config.refusal, streaming.window, streaming.overlap, streaming.frontier, version, files)


class Guard:
    """The rails in force. `rails` is swapped whole on reload; a step uses the set it started with."""

    def __init__(self, rails: RailSet, resolve: ModelResolver | None = None) -> None:
        self.rails = rails
        self.resolve = resolve
        self._retired: set[asyncio.Task] = set()

    @property
    def pipeline(self) -> RailPipeline:
        return self.rails.pipeline

    @property
    def refusal(self) -> str:
        return self.rails.refusal

    def output_filter(self, streamed: bool = True) -> OutputFilter | None:
        """The output rails for one answer. An answer the client gets whole (not streamed) is judged once,
        at its end: releasing it early buys nothing, and one check of the whole text costs less."""
        rails = self.rails
        if not rails.pipeline.has(Stage.OUTPUT):
            return None
        if not streamed:
            return OutputFilter(rails.pipeline, WHOLE, 0, frontier=False)
        return OutputFilter(rails.pipeline, rails.window, rails.overlap, rails.frontier)

    def reload(self, path: Path, tracer: Tracer | None, grace_s: float = 60.0) -> dict[str, Any] | None:
        """A rails file (or NeMo config) that loads replaces the rails; one that does not is logged with
        every error and the last good rails keep serving. Replaced rails are closed after `grace_s`,
        once the steps that started with them are done."""
        try:
            rails = load_rail_set(path, tracer, self.resolve)
        except RailsConfigError as exc:
            log.error("rails_reload_failed", path=str(path), errors=exc.errors, kept=self.rails.version)
            return {"type": "policy_reload_failed", "kind": "rails", "errors": exc.errors, "kept": self.rails.version}
        if rails.version == self.rails.version:
            return None
        retired, self.rails = self.rails, rails
        log.info("rails_reloaded", path=str(path), version=rails.version)
        task = asyncio.create_task(_close_later(retired, grace_s))
        self._retired.add(task)
        task.add_done_callback(self._retired.discard)
        return self.loaded_event("policy_reload")

    def loaded_event(self, kind: str = "policy_loaded") -> dict[str, Any]:
        return {"type": kind, "kind": "rails", "version": self.rails.version, "files": self.rails.files}

    async def aclose(self) -> None:
        for task in list(self._retired):
            task.cancel()
        await self.rails.pipeline.aclose()

    async def inbound(
        self, request: ChatCompletionRequest, indices: Iterable[int]
    ) -> tuple[ChatCompletionRequest, list[Decision]]:
        """The rails on the messages at `indices` (those the session has not judged yet: history.py): tool
        results at the tool_result stage, everything else the client wrote (an assistant turn it made up
        included) at the input stage. Between messages the event loop gets a turn every `SLICE_S` seconds,
        so that a request with many messages never holds the other clients for long."""
        messages = list(request.messages)
        decisions: list[Decision] = []
        changed = False
        started = time.perf_counter()
        for index in indices:
            message = messages[index]
            stage = Stage.TOOL_RESULT if isinstance(message, ToolMessage) else Stage.INPUT
            if not self.pipeline.has(stage):
                continue
            if time.perf_counter() - started > SLICE_S:
                await asyncio.sleep(0)
                started = time.perf_counter()
            content = message.content
            if isinstance(content, str):
                checked = await self._check(stage, content, index, decisions)
                if checked != content:
                    messages[index], changed = msgspec.structs.replace(message, content=checked), True
            elif isinstance(content, list):
                parts = list(content)
                for part_index, part in enumerate(parts):
                    if isinstance(part, TextPart):
                        checked = await self._check(stage, part.text, index, decisions)
                        if checked != part.text:
                            parts[part_index] = TextPart(checked)
                if parts != content:
                    messages[index], changed = msgspec.structs.replace(message, content=parts), True
        if not changed:
            return request, decisions
        return msgspec.structs.replace(request, messages=messages), decisions

    async def _check(self, stage: Stage, text: str, index: int, decisions: list[Decision]) -> str:
        result = await self.pipeline.run(stage, text)
        decisions.extend(msgspec.structs.replace(d, message=index) for d in result.decisions)
        if result.blocked is not None:
            what = "tool result" if stage == Stage.TOOL_RESULT else "prompt"
            message = f"The {what} was blocked by rail {result.blocked.rail}: {result.blocked.reason}"
            raise ContentFiltered(message, f"messages[{index}]", list(decisions))
        return result.content


R = TypeVar("R", StageResult, Released)  # a stage's result on a whole text, or on a streamed piece


class OutputBlocked(Exception):
    def __init__(self, decision: Decision) -> None:
        super().__init__(decision.reason)
        self.decision = decision


WHOLE = 1 << 62  # a window no answer fills: the filter judges the text once, when it is flushed


class OutputFilter:
    """Output rails on assistant text that arrives in pieces. When every output rail reports a frontier
    (`Rail.stream`: the built-in rails do), each piece is released as soon as no text to come can change
    what the rails do with it: everything before the earliest position from which one of their patterns
    could still match, judged and masked exactly as in the whole answer, so a blocked phrase, a maskable
    entity or a blocked pattern never reaches the client in part, however the engine splits the text, and
    ordinary prose goes out as it arrives but for its last word or so.

    Otherwise (a NeMo rail, an LLM judge) text is released only after the window holding it passed the
    rails, and the last `overlap` characters are always held back, so that a blocked phrase or a maskable
    entity up to `overlap` characters long never reaches the client in part. `flush` checks and releases
    the rest at the end."""

    def __init__(self, pipeline: RailPipeline, window: int = 64, overlap: int = 128, frontier: bool = True) -> None:
        self.pipeline = pipeline
        self.window = window
        self.overlap = overlap
        self.pending = ""
        self.decisions: list[Decision] = []
        self.stream = pipeline.stream(Stage.OUTPUT) if frontier else None

    async def feed(self, text: str) -> str:
        if self.stream is not None:
            return self._take(self.stream.feed(text)).content
        self.pending += text
        if len(self.pending) < self.window + self.overlap:
            return ""
        return await self._release(final=False)

    async def flush(self) -> str:
        if self.stream is not None:
            return self._take(self.stream.feed("", final=True)).content
        return await self._release(final=True) if self.pending else ""

    def _take(self, result: R) -> R:
        for decision in result.decisions:
            if decision not in self.decisions:
                self.decisions.append(decision)
        if result.blocked is not None:
            raise OutputBlocked(result.blocked)
        return result

    async def _release(self, final: bool) -> str:
        whole = await self._run(self.pending)
        if final:
            self.pending = ""
            return whole.content
        cut = len(self.pending) - self.overlap
        if not whole.modified:
            released, self.pending = self.pending[:cut], self.pending[cut:]
            return released
        for _ in range(8):  # a cut that no masked span crosses: masking both sides = masking the whole
            cut = self.pending.rfind(" ", 0, cut)
            if cut <= 0:
                return ""
            head = await self._run(self.pending[:cut])
            rest = await self._run(self.pending[cut:])
            if head.content + rest.content == whole.content:
                self.pending = self.pending[cut:]
                return head.content
        return ""

    async def _run(self, text: str) -> StageResult:
        return self._take(await self.pipeline.run(Stage.OUTPUT, text))


async def filter_output(
    chunks: AsyncIterator[ChatCompletionChunk], output: OutputFilter, refusal: str
) -> AsyncGenerator[ChatCompletionChunk, None]:
    """Engine chunks with their text replaced by what the output rails released. On a block: the
    refusal text, then `finish_reason: "content_filter"`, and the engine stream is left (aborted)."""
    async for chunk in chunks:
        text = "".join(choice.delta.content or "" for choice in chunk.choices)
        finishing = any(choice.finish_reason for choice in chunk.choices)
        try:
            released = await output.feed(text) if text else ""
            if finishing:
                released += await output.flush()
        except OutputBlocked:
            yield _chunk_like(chunk, Delta(content=refusal), None)
            yield _chunk_like(chunk, Delta(), "content_filter")
            return
        if chunk.choices:
            chunk.choices[0].delta.content = released or None
            if not released and not finishing and _empty(chunk.choices[0].delta):
                continue
        yield chunk


def _empty(delta: Delta) -> bool:
    return not (delta.role or delta.content or delta.tool_calls or delta.refusal)


def _chunk_like(chunk: ChatCompletionChunk, delta: Delta, finish: str | None) -> ChatCompletionChunk:
    return ChatCompletionChunk(
        id=chunk.id, model=chunk.model, choices=[ChunkChoice(delta, finish)], created=chunk.created
    )


async def _close_later(rails: RailSet, delay_s: float) -> None:
    try:
        await asyncio.sleep(delay_s)
    finally:
        await rails.pipeline.aclose()
