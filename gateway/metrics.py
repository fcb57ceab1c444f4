"""Prometheus metrics, one registry per app (so several apps in one process never collide)."""

from __future__ import annotations

from typing import Any, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

M = TypeVar("M", Counter, Gauge, Histogram)

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "sentrail_http_requests", "HTTP requests by route and status", ["method", "route", "status"], registry=r
        )
        self.latency = Histogram(
            "sentrail_http_request_duration_seconds",
            "Time from request start to the end of the response body",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.inflight = Gauge("sentrail_http_requests_in_flight", "Requests being served", registry=r)
        self.tokens = Counter(
            "sentrail_tokens", "Tokens by model and direction (input/output)", ["model", "direction"], registry=r
        )
        self.ttft = Histogram(
            "sentrail_time_to_first_token_seconds", "Engine time to first chunk", ["model"],
            buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip

        self.engine_inflight = Gauge("sentrail_engine_requests_in_flight", "Engine slots in use", ["model"], registry=r)
        self.engine_waiting = Gauge(
            "sentrail_engine_requests_waiting", "Requests waiting for a slot", ["model"], registry=r
        )

        engine = ["engine"]
        self.engine_ttft = Histogram(
            "sentrail_engine_time_to_first_token_seconds", "Time to first chunk per engine", engine,
            buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.engine_tokens = Counter("sentrail_engine_output_tokens", "Output tokens per engine", engine, registry=r)
        self.engine_errors = Counter(
            "sentrail_engine_errors", "Requests an engine failed (unreachable, crashed)", engine, registry=r
        )
        self.engine_restarts = Gauge("sentrail_engine_restarts", "Restarts of a managed engine", engine, registry=r)
        self.engine_busy = Gauge("sentrail_engine_in_flight", "Requests in flight per engine", engine, registry=r)
        self.engine_up = Gauge("sentrail_engine_healthy", "1 when the engine takes requests", engine, registry=r)

        self.mcp_calls = Counter(
            "sentrail_mcp_tool_calls", "MCP tools/call by outcome (allow, deny, require_approval, blocked, "
            "upstream_error, hidden, error)", ["outcome"], registry=r,
        )  # fmt: skip
        self.mcp_latency = Histogram(
            "sentrail_mcp_tool_call_duration_seconds", "An MCP tools/call through Sentrail, judged and run",
            buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip

        self._children: dict[tuple[Any, tuple[str, ...]], Any] = {}

    def child(self, metric: M, *values: str) -> M:
        """`metric.labels(*values)`, looked up once: the request path counts with the same few label values
        over and over (labels() checks and converts them and takes a lock, ~2 µs a call). Children are never
        removed here, so the one found stays the one the registry renders."""
        key = (metric, values)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*values)
        return found

    def render(self) -> bytes:
        return generate_latest(self.registry)
