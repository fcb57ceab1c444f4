"""The MCP gateway: Sentrail as an MCP server in front of MCP servers (see server.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import structlog
from opentelemetry.trace import Tracer

from gateway.mcp.calls import CallJudge
from gateway.mcp.config import load_mcp_config
from gateway.mcp.pinning import Pins
from gateway.mcp.server import McpGateway, mcp_route
from gateway.metrics import Metrics
from gateway.settings import Settings
from gateway.steps.guard import Guard
from gateway.steps.tool_guard import ToolGuard
from gateway.stores.approvals import ApprovalStore
from gateway.stores.audit import AuditLog
from gateway.stores.keys import KeyStore
from gateway.stores.ratelimit import RateLimiter
from gateway.stores.sessions import SessionStore

__all__ = ["McpGateway", "load_mcp_gateway", "mcp_path", "mcp_route"]
log = structlog.get_logger("sentrail.mcp")


def mcp_path(settings: Settings) -> Path:
    return Path(settings.policies_dir) / "mcp.yaml"


def load_mcp_gateway(
    settings: Settings, redis: Any, sessions: SessionStore, guard: Guard | None, tools: ToolGuard | None,
    approvals: ApprovalStore, audit: AuditLog | None, limiter: RateLimiter, tracer: Tracer, key_store: KeyStore,
    metrics: Metrics | None = None,
) -> McpGateway:  # fmt: skip
    """The gateway from <policies_dir>/mcp.yaml. Without the file, `/mcp` answers 404 until a reload finds one.
    An invalid file raises `RailsConfigError` with every problem as file:line (serve refuses to start)."""
    path = mcp_path(settings)
    config = load_mcp_config(path)
    judge = CallJudge(sessions, tools, guard, approvals, audit, limiter, settings.audit_content)
    ttl = tools.policy.file.approval_ttl_s if tools is not None else 3600
    pins = Pins(redis, approvals, config.file.pinning.on_change, ttl)
    if config.version:
        log.info("mcp_loaded", path=str(path), servers=[s.name for s in config.file.enabled], version=config.version)
    return McpGateway(config, judge, pins, guard, audit, tracer, key_store, settings.dev_mode, metrics=metrics)
