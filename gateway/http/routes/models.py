"""`/v1/models`: the models the key may use. Any role may list them (metadata, no tenant data: an OpenAI
client often lists models first, whatever it is for); chat and responses need `agent`."""

from __future__ import annotations

from litestar import Request, get

from gateway.errors import ModelNotFound
from gateway.http.routes.deps import ANY_ROLE, authenticate
from protocol.openai import Model, ModelList


@get("/v1/models")
async def list_models(request: Request) -> ModelList:
    key = await authenticate(request, ANY_ROLE)
    created = request.app.state.started_at
    return ModelList([Model(id=m, created=created) for m in request.app.state.pool.model_ids if key.allows_model(m)])


@get("/v1/models/{model_id:path}")
async def get_model(request: Request, model_id: str) -> Model:
    key = await authenticate(request, ANY_ROLE)
    model_id = model_id.lstrip("/")
    if model_id not in request.app.state.pool.model_ids or not key.allows_model(model_id):
        raise ModelNotFound(model_id)
    return Model(id=model_id, created=request.app.state.started_at)
