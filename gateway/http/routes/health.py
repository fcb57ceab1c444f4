"""NIM-compatible probes and Prometheus metrics."""

from __future__ import annotations

from litestar import Request, Response, get
from redis.exceptions import RedisError

from engines.inprocess import InProcessVllmEngine
from protocol.openai import HealthResponse


@get("/v1/health/live")
async def live() -> HealthResponse:
    return HealthResponse(message="Service is live.")


@get("/v1/health/ready")
async def ready(request: Request) -> Response[HealthResponse]:
    models = await request.app.state.pool.readiness()
    try:
        store = bool(await request.app.state.redis.ping())
    except RedisError:
        store = False
    if models and all(models.values()) and store:
        return Response(HealthResponse(message="Service is ready.", models=models, store=store))
    return Response(HealthResponse(message="Service is not ready.", models=models, store=store), status_code=503)


@get("/metrics", media_type="text/plain; version=0.0.4")
async def metrics(request: Request) -> bytes:
    pool = request.app.state.pool
    m = request.app.state.metrics
    for model, load in pool.load().items():
        m.engine_inflight.labels(model).set(load["inflight"])
        m.engine_waiting.labels(model).set(load["waiting"])
    for name, replica in pool.replicas().items():
        m.engine_busy.labels(name).set(replica.inflight)
        m.engine_up.labels(name).set(int(replica.healthy))
        m.engine_restarts.labels(name).set(replica.restarts)
    # an in-process engine has no port of its own: its vLLM metrics (`vllm:*`) are served here
    own = [engine.metrics() for engine in pool.engines() if isinstance(engine, InProcessVllmEngine)]
    return b"".join([m.render(), *own])
