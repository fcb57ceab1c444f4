"""`create_app(settings)`: the Litestar app, its lifespan (engine pool up and down) and its error handling."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import socket
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from functools import partial
from pathlib import Path

import structlog
from litestar import Litestar, Request, Response
from litestar.exceptions import HTTPException
from litestar.routes import HTTPRoute
from opentelemetry.sdk.trace import SpanProcessor
from opentelemetry.trace import Tracer

from engines.base import Engine
from engines.inprocess import InProcessVllmEngine
from engines.models import embedded_model_dir, is_prepared, prepare_embedded_model
from engines.pool import EnginePool
from engines.remote import OpenAIEngine
from engines.vllm_server import VllmServerEngine
from gateway.errors import STATUS_ERROR_TYPES, UnsupportedMediaType, describe, kind_of, to_error_body
from gateway.http.middleware import RequestContextMiddleware
from gateway.http.reload import watch_folder
from gateway.http.routes import ROUTES
from gateway.mcp import load_mcp_gateway, mcp_route
from gateway.metrics import Metrics
from gateway.observability import build_tracer_provider
from gateway.settings import EngineSettings, Settings
from gateway.steps.chat import ChatService
from gateway.steps.guard import Guard, load_rail_set
from gateway.steps.responses import ResponseStore
from gateway.steps.tool_guard import ToolGuard
from gateway.stores.approvals import ApprovalStore
from gateway.stores.audit import SYSTEM, AuditLog
from gateway.stores.keys import KeyStore
from gateway.stores.ratelimit import RateLimiter
from gateway.stores.redis_server import EmbeddedRedis, connect_redis, write_redis_url
from gateway.stores.sessions import SessionStore
from rails.builtin.nemo import Endpoint, ModelResolver
from rails.tools.config import load_tool_policy

log = structlog.get_logger("sentrail.app")


def build_engines(settings: Settings) -> dict[str, list[tuple[Engine, int, float]]]:
    """Settings -> engine objects (not started). The embedded model is prepared on first use."""
    models: dict[str, list[tuple[Engine, int, float]]] = {}
    for model in settings.models:
        engines: list[tuple[Engine, int, float]] = []
        for index, spec in enumerate(model.engines):
            name = f"{model.id}#{index}"
            engines.append((_engine(name, model.id, spec, settings), spec.max_concurrency, spec.weight))
        models[model.id] = engines
    return models


def _engine(name: str, model_id: str, spec: EngineSettings, settings: Settings) -> Engine:
    upstream = spec.upstream_model or model_id
    if spec.kind == "remote":
        assert spec.url  # load_settings checked it
        return OpenAIEngine(name, spec.url, upstream, api_key=spec.api_key, read_timeout_s=spec.read_timeout_s)
    path = spec.model_path or str(embedded_model_dir(settings.home_path))
    if spec.kind == "inprocess":
        return InProcessVllmEngine(name, path, upstream, spec.args, spec.read_timeout_s)
    return VllmServerEngine(
        name, path, upstream, spec.port, spec.args, dict(spec.env), spec.startup_timeout_s, spec.cpus, spec.gpus,
        spec.read_timeout_s,
    )  # fmt: skip


def handle_exception(request: Request, exc: Exception) -> Response:
    """Every error a client sees leaves through here, as an OpenAI error body."""
    if isinstance(exc, HTTPException):
        error_type = STATUS_ERROR_TYPES.get(exc.status_code, "internal_error")
        message, param = str(exc.detail), None
    else:
        error_type, message, param = describe(exc)
    if error_type == "internal_error":
        log.error("unhandled_error", exc_info=exc)
    headers = dict(getattr(exc, "headers", None) or {})
    if error_type in ("overloaded", "rate_limit_exceeded"):
        headers["Retry-After"] = str(getattr(exc, "retry_after_s", 1))
    if error_type == "request_timeout":  # the rest of the body may still be on its way: no further request
        headers["Connection"] = "close"
    return Response(to_error_body(error_type, message, param), status_code=kind_of(error_type).status, headers=headers)


BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


async def require_json(request: Request) -> None:
    """Every request body is JSON: one without `Content-Type: application/json` (a charset, if named,
    must be UTF-8) is refused with 415 before anything reads it. A browser can send a cross-site form
    or `text/plain` POST without asking first (no CORS preflight); `application/json` needs the
    preflight, which this server does not grant, so a page cannot drive a loopback `--dev` gateway."""
    if request.method in BODY_METHODS and not is_json(request.headers.get("content-type", "")):
        raise UnsupportedMediaType("Send the request body as JSON with 'Content-Type: application/json'.")


def is_json(content_type: str) -> bool:
    """`application/json`, with any parameters, of which a charset must be UTF-8 (RFC 8259)."""
    media_type, *params = content_type.split(";")
    if media_type.strip().lower() != "application/json":
        return False
    for param in params:
        name, _, value = param.partition("=")
        if name.strip().lower() == "charset" and value.strip().strip('"').lower() not in ("utf-8", "utf8"):
            return False
    return True


def allowed_methods(app: Litestar) -> dict[str, str]:
    """Route template -> its `Allow` header value, from the routes as built (every handler of a path)."""
    return {route.path_format: ", ".join(sorted(route.methods)) for route in app.routes if isinstance(route, HTTPRoute)}


def create_app(
    settings: Settings,
    engines: Mapping[str, Sequence[tuple[Engine, int] | tuple[Engine, int, float]]] | None = None,
    span_processors: list[SpanProcessor] | None = None,
) -> Litestar:
    pool = EnginePool(engines or build_engines(settings), settings.max_waiting, settings.wait_timeout_s)
    metrics = Metrics()
    tracer_provider = build_tracer_provider(span_processors)
    tracer = tracer_provider.get_tracer("sentrail")
    embedded_redis = None
    redis_url = settings.redis_url
    if not redis_url:  # the default: an embedded Redis persisting under <data_dir>/redis
        embedded_redis = EmbeddedRedis(settings.data_path / "redis", fsync=settings.redis_fsync)
        redis_url = embedded_redis.url
    redis = connect_redis(redis_url, settings.redis_timeout_s, settings.redis_max_connections)
    sessions = SessionStore(redis, settings.session_ttl_s)
    guard = load_guard(settings, tracer, partial(model_endpoint, pool))
    tools = load_tool_guard(settings, tracer)
    approvals = ApprovalStore(redis)
    audit = AuditLog.from_settings(redis, settings)  # the audit key: audit_key_file, or --dev's own
    key_store, limiter = KeyStore(redis, settings.key_cache_s), RateLimiter(redis)
    mcp = load_mcp_gateway(settings, redis, sessions, guard, tools, approvals, audit, limiter, tracer, key_store,
                           metrics)  # fmt: skip

    @contextlib.asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        if embedded_redis is not None:
            await embedded_redis.start()
            write_redis_url(settings.data_path, embedded_redis.url)
        if engines is None:
            await _prepare_embedded(settings)
        await pool.start()
        watchers = [asyncio.create_task(_watch_health(pool, settings.health_interval_s))]
        reloaders = [partial(guard.reload, rails_path(settings), tracer)] if guard is not None else []
        reloaders += [tools.reload] if tools is not None else []
        reloaders.append(mcp.reload)
        policies = Path(settings.policies_dir)
        loaded = [g.loaded_event() for g in (guard, tools) if g is not None]
        loaded += [mcp.loaded_event()] if mcp.configured else []
        await audit.append(SYSTEM, [{**event, "gateway": socket.gethostname()} for event in loaded])
        record = partial(audit.append, SYSTEM)
        watchers.append(asyncio.create_task(watch_folder(policies, settings.rails_reload_s, reloaders, record)))
        gc.collect()
        gc.freeze()  # what startup built stays: full collections under load then scan only per-request garbage
        log.info("gateway_ready", models=pool.model_ids, dev_mode=settings.dev_mode)
        try:
            yield
        finally:
            for watcher in watchers:
                watcher.cancel()
            if guard is not None:
                await guard.aclose()
            await pool.stop()
            await redis.aclose()
            if embedded_redis is not None:
                await embedded_redis.stop()
            tracer_provider.shutdown()

    app = Litestar(
        route_handlers=[*ROUTES, mcp_route(mcp)],
        lifespan=[lifespan, mcp.lifespan],  # /mcp: policies/mcp.yaml
        exception_handlers={Exception: handle_exception},
        before_request=require_json,
        request_max_body_size=settings.max_body_bytes,
        openapi_config=None,
        logging_config=None,
        debug=False,
    )
    app.state.update(
        pool=pool, metrics=metrics, settings=settings, started_at=int(time.time()), redis=redis, sessions=sessions,
        redis_url=redis_url,
        key_store=key_store, responses=ResponseStore(redis, settings.session_ttl_s), mcp=mcp,
        chat=ChatService(
            pool, metrics, tracer, sessions, limiter, guard, tools, approvals, audit,
            settings.audit_content, settings.trace_content,
        ),
        approvals=approvals, audit=audit, tracer_provider=tracer_provider,
    )  # fmt: skip
    app.asgi_handler = RequestContextMiddleware(
        app.asgi_handler, metrics, tracer, settings.request_body_timeout_s, allowed_methods(app)
    )
    return app


def rails_path(settings: Settings) -> Path:
    return Path(settings.policies_dir) / "rails.yaml"


def load_guard(settings: Settings, tracer: Tracer, resolve: ModelResolver | None = None) -> Guard | None:
    """Rails from <policies_dir>/rails.yaml; an invalid file raises `RailsConfigError` (serve refuses)."""
    path = rails_path(settings)
    if not path.exists():
        log.warning("rails_not_configured", path=str(path))
        return None
    rails = load_rail_set(path, tracer, resolve)
    log.info("rails_loaded", path=str(path), version=rails.version)
    return Guard(rails, resolve)


def load_tool_guard(settings: Settings, tracer: Tracer) -> ToolGuard | None:
    """Tool policy from <policies_dir>/tools.yaml; invalid raises `RailsConfigError` (serve refuses)."""
    path = Path(settings.policies_dir) / "tools.yaml"
    if not path.exists():
        log.warning("tool_policy_not_configured", path=str(path))
        return None
    policy = load_tool_policy(path)
    log.info("tool_policy_loaded", path=str(path), version=policy.version)
    return ToolGuard(policy, path, tracer, settings.trace_content)


def model_endpoint(pool: EnginePool, model_id: str) -> Endpoint | None:
    """Where LLM-backed rails reach a Sentrail model: the OpenAI-compatible surface of its first engine
    with a network address (an in-process engine has none)."""
    for engine in pool.engines_of(model_id):
        base_url = getattr(engine, "base_url", None)
        if base_url and not isinstance(engine, InProcessVllmEngine):
            return Endpoint(f"{base_url}/v1", engine.upstream_model, engine.api_key)
    return None


async def _prepare_embedded(settings: Settings) -> None:
    uses_embedded = any(e.kind != "remote" and not e.model_path for m in settings.models for e in m.engines)
    if uses_embedded and not is_prepared(embedded_model_dir(settings.home_path)):
        await asyncio.to_thread(
            prepare_embedded_model, settings.home_path, False, lambda m: log.info("model_prepare", step=m)
        )


async def _watch_health(pool: EnginePool, interval_s: float) -> None:
    """Refresh replica health in the background so routing skips dead engines between probes."""
    while True:
        await asyncio.sleep(interval_s)
        try:
            pool.supervise()
            await pool.readiness()
        except Exception as exc:  # a failing check must never stop the watcher
            log.warning("health_check_failed", error=repr(exc))
