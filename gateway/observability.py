"""structlog and OpenTelemetry setup, and the span attributes Sentrail records (GenAI semantic conventions).

Logs: JSON lines in production, a readable console on a TTY; request ids come from contextvars.
Traces: one TracerProvider per app. OTLP export is on when the standard `OTEL_EXPORTER_OTLP_*`
variables name an endpoint; tests pass their own span processor (an in-memory exporter).
"""

from __future__ import annotations

import io
import logging
import os
import sys
from typing import Any, ClassVar, TextIO

import structlog
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from protocol.openai import ChatCompletionRequest

SERVICE_NAME = "sentrail"


class _StderrNow(io.TextIOBase):
    """Whatever `sys.stderr` is when a line is written (not when logging was configured): a replaced
    and closed stream (a test's capture, say) never swallows or breaks later log lines."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()

    def isatty(self) -> bool:
        return sys.stderr.isatty()


def configure_logging(
    log_format: str = "auto", level: str = "info", stream: TextIO | None = None, cache: bool = True
) -> None:
    """Route structlog and the standard library's logging through one renderer."""
    stream = stream or _StderrNow()
    if log_format == "auto":
        log_format = "console" if stream.isatty() else "json"
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        add_trace_ids,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: Any = structlog.dev.ConsoleRenderer() if log_format == "console" else structlog.processors.JSONRenderer()
    numeric = logging.getLevelNamesMapping()[level.upper()]
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(stream),
        cache_logger_on_first_use=cache,
    )
    handler = logging.StreamHandler(stream)
    formatter = structlog.stdlib.ProcessorFormatter(
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            renderer,
        ],
        foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
    )
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(max(numeric, logging.WARNING))  # libraries speak at WARNING and above
    logging.getLogger("uvicorn.error").setLevel(numeric)  # ...except the server's own start/stop lines


def add_trace_ids(_: Any, __: str, event: dict[str, Any]) -> dict[str, Any]:
    """structlog processor: the current span's trace and span ids (hex, as OTLP backends show them)."""
    context = trace.get_current_span().get_span_context()
    if context.is_valid:
        event["trace_id"] = format(context.trace_id, "032x")
        event["span_id"] = format(context.span_id, "016x")
    return event


class StepAttributes(SpanProcessor):
    """Every span started inside a request carries its tenant, session (`gen_ai.conversation.id`) and
    request id, from the log context that the request path binds."""

    KEYS: ClassVar[dict[str, str]] = {
        "tenant": "sentrail.tenant", "session_id": "gen_ai.conversation.id", "request_id": "sentrail.request_id"
    }  # fmt: skip

    def on_start(self, span: Any, parent_context: Any = None) -> None:
        bound = structlog.contextvars.get_contextvars()
        span.set_attributes({attribute: bound[key] for key, attribute in self.KEYS.items() if key in bound})


def bind_step(tenant: str, session_id: str) -> None:
    """Called once the step's caller and session are known: logs and spans from here on carry them,
    and so does the request's server span."""
    structlog.contextvars.bind_contextvars(tenant=tenant, session_id=session_id)
    span = trace.get_current_span()
    if span.is_recording():
        span.set_attribute("sentrail.tenant", tenant)
        span.set_attribute("gen_ai.conversation.id", session_id)


def build_tracer_provider(extra_processors: list[SpanProcessor] | None = None) -> TracerProvider:
    provider = TracerProvider(resource=Resource.create({"service.name": SERVICE_NAME}))
    provider.add_span_processor(StepAttributes())
    if os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    for processor in extra_processors or ():
        provider.add_span_processor(processor)
    return provider


def chat_span_attributes(request: ChatCompletionRequest, provider: str) -> dict[str, Any]:
    """`chat {model}` CLIENT span attributes for the engine call (request side)."""
    attributes: dict[str, Any] = {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": provider,
        "gen_ai.request.model": request.model,
    }
    optional = {
        "gen_ai.request.temperature": request.temperature,
        "gen_ai.request.top_p": request.top_p,
        "gen_ai.request.max_tokens": request.max_completion_tokens or request.max_tokens,
        "gen_ai.request.seed": request.seed,
        "gen_ai.request.stream": request.stream,
    }
    attributes.update({k: v for k, v in optional.items() if v is not None})
    return attributes
