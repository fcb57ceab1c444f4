"""The embedded Redis is supervised: killed with SIGKILL, it is restarted on the same data and address,
with what it had acknowledged, and the gateway's client reconnects by itself (it stayed down for good)."""

import asyncio
import os
import signal

from gateway.stores.redis_server import EmbeddedRedis, connect_redis


async def test_a_killed_embedded_redis_is_restarted_with_its_data(tmp_path):
    server = EmbeddedRedis(tmp_path / "redis")
    url = await server.start()
    client = connect_redis(url, 2.0)
    try:
        await client.set("acknowledged", "yes")
        os.kill(server._process.pid, signal.SIGKILL)
        for _ in range(100):  # at most ~10 s: the first restart waits 0.5 s
            await asyncio.sleep(0.1)
            try:
                if await client.get("acknowledged") == b"yes" and server.restarts:
                    break
            except Exception:  # down meanwhile: the request path answers 503 store_unavailable
                continue
        assert await client.get("acknowledged") == b"yes"
        assert server.restarts == 1
    finally:
        await client.aclose()
        await server.stop()
    assert server._process is None
