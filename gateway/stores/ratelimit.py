"""Per-key rate limits (requests and tokens per minute), counted atomically in Redis.

Fixed one-minute windows: one Lua call admits a request (counts it, reads the window's tokens and
its time left); tokens are added when the step's usage is known. Responses carry the
`x-ratelimit-*` headers OpenAI clients read; a refusal is a 429 with `Retry-After`.
"""

from __future__ import annotations

import math
import time

import redis.asyncio as aioredis

from gateway.errors import RateLimited
from gateway.stores.keys import KeyRecord

WINDOW_S = 60
_ADMIT = """
local requests = redis.call('INCR', KEYS[1])
if requests == 1 then redis.call('EXPIRE', KEYS[1], ARGV[1]) end
local tokens = tonumber(redis.call('GET', KEYS[2]) or '0')
return {requests, tokens}
"""


class RateLimiter:
    def __init__(self, redis: aioredis.Redis) -> None:
        self.redis = redis
        self._admit = redis.register_script(_ADMIT)

    @staticmethod
    def _window(key: KeyRecord, now: float) -> tuple[str, str, float]:
        window = int(now // WINDOW_S)
        base = f"sentrail:rl:{key.key_id}:{window}"
        return f"{base}:req", f"{base}:tok", (window + 1) * WINDOW_S - now

    async def admit(self, key: KeyRecord) -> dict[str, str]:
        """Count this request; return the headers to send, or raise `RateLimited` (429)."""
        rpm, tpm = key.limits.requests_per_minute, key.limits.tokens_per_minute
        if not rpm and not tpm:
            return {}
        requests_key, tokens_key, reset_s = self._window(key, time.time())
        requests, tokens = await self._admit(keys=[requests_key, tokens_key], args=[WINDOW_S * 2])
        headers = _headers(rpm, tpm, requests, tokens, reset_s)
        if rpm and requests > rpm:
            raise RateLimited(f"Rate limit of {rpm} requests per minute reached.", math.ceil(reset_s), headers)
        if tpm and tokens >= tpm:
            raise RateLimited(f"Rate limit of {tpm} tokens per minute reached.", math.ceil(reset_s), headers)
        return headers

    async def add_tokens(self, key: KeyRecord, tokens: int) -> None:
        if not key.limits.tokens_per_minute or tokens <= 0:
            return
        _, tokens_key, _ = self._window(key, time.time())
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.incrby(tokens_key, tokens)
            pipe.expire(tokens_key, WINDOW_S * 2)
            await pipe.execute()


def _headers(rpm: int, tpm: int, requests: int, tokens: int, reset_s: float) -> dict[str, str]:
    reset = f"{max(reset_s, 0):.0f}s"
    headers = {}
    if rpm:
        headers |= {
            "x-ratelimit-limit-requests": str(rpm),
            "x-ratelimit-remaining-requests": str(max(rpm - requests, 0)),
            "x-ratelimit-reset-requests": reset,
        }
    if tpm:
        headers |= {
            "x-ratelimit-limit-tokens": str(tpm),
            "x-ratelimit-remaining-tokens": str(max(tpm - tokens, 0)),
            "x-ratelimit-reset-tokens": reset,
        }
    return headers
