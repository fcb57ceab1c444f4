"""API keys, per-key rate limits and session budgets, against a real Redis."""

import json
import time

import pytest

from gateway.settings import ConfigError, load_settings
from gateway.stores.keys import Limits
from tests.conftest import RedisServer
from tests.doubles import ScriptedEngine

from .conftest import MODEL

CHAT = "/v1/chat/completions"
BODY = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}


def bearer(secret: str, **extra: str) -> dict[str, str]:
    return {"authorization": f"Bearer {secret}", **extra}


@pytest.mark.parametrize(
    "headers", [{}, {"authorization": "Bearer sk-sentrail-nope-nope"}, {"authorization": "Basic abc"}]
)
async def test_missing_or_invalid_key_is_401(make_client, headers):
    engine = ScriptedEngine()
    async with make_client(engine, dev_mode=False) as client:
        response = await client.post(CHAT, json=BODY, headers=headers)
        models = await client.get("/v1/models", headers=headers)
    assert response.status_code == 401 and models.status_code == 401
    assert response.json()["error"]["type"] == "authentication_error"
    assert engine.requests == []


async def test_model_outside_the_keys_allowance_is_403(make_client, keys):
    secret, _ = await keys.create("acme", models=("some-other-model",))
    async with make_client(dev_mode=False) as client:
        response = await client.post(CHAT, json=BODY, headers=bearer(secret))
        listed = await client.get("/v1/models", headers=bearer(secret))
    assert response.status_code == 403
    assert response.json()["error"]["param"] == "model"
    assert listed.json()["data"] == []  # a key only sees the models it may use


async def test_revoked_key_stops_working(make_client, keys):
    secret, record = await keys.create("acme")
    async with make_client(dev_mode=False) as client:
        assert (await client.post(CHAT, json=BODY, headers=bearer(secret))).status_code == 200
        assert await keys.revoke(record.key_id)
        assert (await client.post(CHAT, json=BODY, headers=bearer(secret))).status_code == 401


async def test_keys_are_stored_only_as_hashes(keys, redis_server):
    secret, record = await keys.create("acme")
    dump = b"".join([k + (await keys.redis.dump(k) or b"") for k in await keys.redis.keys("*")])
    assert secret.encode() not in dump
    assert [k.key_id for k in await keys.list()] == [record.key_id]


async def test_requests_per_minute_limit_gives_429_with_headers(make_client, keys):
    secret, _ = await keys.create("acme", limits=Limits(requests_per_minute=2))
    async with make_client(dev_mode=False) as client:
        ok = [await client.post(CHAT, json=BODY, headers=bearer(secret)) for _ in range(2)]
        refused = await client.post(CHAT, json=BODY, headers=bearer(secret))
    assert [r.status_code for r in ok] == [200, 200]
    assert ok[0].headers["x-ratelimit-limit-requests"] == "2"
    assert ok[0].headers["x-ratelimit-remaining-requests"] == "1"
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "rate_limit_exceeded"
    assert 1 <= int(refused.headers["retry-after"]) <= 60
    assert refused.headers["x-ratelimit-remaining-requests"] == "0"
    assert refused.headers["x-ratelimit-reset-requests"].endswith("s")


async def test_tokens_per_minute_limit_counts_usage(make_client, keys):
    secret, _ = await keys.create("acme", limits=Limits(tokens_per_minute=10))  # one step uses 9 tokens
    async with make_client(dev_mode=False) as client:
        first = await client.post(CHAT, json=BODY, headers=bearer(secret))
        second = await client.post(CHAT, json=BODY, headers=bearer(secret))
        third = await client.post(CHAT, json=BODY, headers=bearer(secret))
    assert first.status_code == 200 and first.headers["x-ratelimit-remaining-tokens"] == "10"
    assert second.status_code == 200 and second.headers["x-ratelimit-remaining-tokens"] == "1"
    assert third.status_code == 429 and "tokens per minute" in third.json()["error"]["message"]


async def test_step_budget_names_the_budget(make_client, keys):
    secret, _ = await keys.create("acme", limits=Limits(max_session_steps=2))
    headers = bearer(secret, **{"x-session-id": "loop"})
    async with make_client(dev_mode=False) as client:
        statuses = [(await client.post(CHAT, json=BODY, headers=headers)).status_code for _ in range(2)]
        refused = await client.post(CHAT, json=BODY, headers=headers)
        other_session = await client.post(CHAT, json=BODY, headers=bearer(secret, **{"x-session-id": "fresh"}))
    assert statuses == [200, 200]
    assert refused.status_code == 403
    error = refused.json()["error"]
    assert error["code"] == "budget_exceeded" and "max_session_steps=2" in error["message"]
    assert other_session.status_code == 200


async def test_token_budget_caps_each_step_and_then_refuses(make_client, keys):
    engine = ScriptedEngine()
    secret, _ = await keys.create("acme", limits=Limits(max_session_tokens=12))
    headers = bearer(secret, **{"x-session-id": "loop"})
    async with make_client(engine, dev_mode=False) as client:
        first = await client.post(CHAT, json={**BODY, "max_tokens": 500}, headers=headers)
        second = await client.post(CHAT, json={**BODY, "max_tokens": 500}, headers=headers)
        refused = await client.post(CHAT, json=BODY, headers=headers)
    assert first.status_code == 200 and second.status_code == 200
    assert engine.requests[0].max_completion_tokens == 12  # capped to what the budget has left
    assert engine.requests[1].max_completion_tokens == 3  # 12 - (7 in + 2 out)
    assert refused.status_code == 403 and "max_session_tokens=12" in refused.json()["error"]["message"]


async def test_wall_time_budget(make_client, keys, monkeypatch):
    secret, _ = await keys.create("acme", limits=Limits(max_session_seconds=60))
    headers = bearer(secret, **{"x-session-id": "slow"})
    async with make_client(dev_mode=False) as client:
        assert (await client.post(CHAT, json=BODY, headers=headers)).status_code == 200
        later = time.time() + 61
        monkeypatch.setattr("gateway.steps.chat.time.time", lambda: later)
        refused = await client.post(CHAT, json=BODY, headers=headers)
    assert refused.status_code == 403 and "max_session_seconds=60" in refused.json()["error"]["message"]


def test_dev_mode_is_refused_off_loopback():
    with pytest.raises(ConfigError, match="loopback"):
        load_settings(environ={}, dev_mode=True, host="0.0.0.0")
    assert load_settings(environ={}, dev_mode=True).dev_mode


async def test_redis_outage_fails_closed_fast_and_recovers(make_client, tmp_path):
    server = RedisServer(tmp_path)
    server.start()
    try:
        async with make_client(redis_url=server.url, redis_timeout_s=0.5) as client:
            headers = {"x-session-id": "durable"}
            assert (await client.post(CHAT, json=BODY, headers=headers)).status_code == 200
            server.stop()
            started = time.monotonic()
            down = await client.post(CHAT, json=BODY, headers=headers)
            assert time.monotonic() - started < 5
            assert down.status_code == 503 and down.json()["error"]["code"] == "store_unavailable"
            ready = await client.get("/v1/health/ready")
            assert ready.status_code == 503 and ready.json()["store"] is False
            server.start()  # same port, same AOF
            assert (await client.post(CHAT, json=BODY, headers=headers)).status_code == 200
            steps = (await client.get("/v1/sessions/durable")).json()["steps"]
            assert len(steps) == 2  # the step acknowledged before the outage survived the restart
            assert json.dumps(steps[0]["emitted"]["content"]) == '"Hello world"'
    finally:
        server.stop()
