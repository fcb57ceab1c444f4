"""Sessions expire by TTL; the tenant's session index must not keep the expired ones forever (it grew by
one entry per session ever made: `GET /v1/sessions` pruned only the entries it listed)."""

import time

import redis

from tests.doubles import ScriptedEngine

from .conftest import MODEL


async def test_a_step_drops_sessions_idle_past_the_ttl_from_the_index(make_client, redis_server):
    index = "sentrail:tenant:dev:sessions"
    client = redis.Redis.from_url(redis_server.url)
    long_gone = time.time() - 7200
    client.zadd(index, {f"old-{i}": long_gone - i for i in range(500)})  # sessions whose keys expired
    async with make_client(ScriptedEngine(), session_ttl_s=3600) as http:
        response = await http.post("/v1/chat/completions", json={"model": MODEL, "messages": [
            {"role": "user", "content": "hi"}]}, headers={"x-session-id": "alive"})  # fmt: skip
    assert response.status_code == 200
    assert [m.decode() for m in client.zrange(index, 0, -1)] == ["alive"]
    client.close()
