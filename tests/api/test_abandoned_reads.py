"""A read whose client has gone stops there: it no longer holds a connection to MongoDB or
Redis that a waiting request needs (handlers/base.py, on_connection_close)."""

from __future__ import annotations

import asyncio
import base64
from urllib.parse import urlsplit

import pytest
from redis.asyncio import Redis

from tests.conftest import another_instance, make_settings


async def mget_calls(redis: Redis) -> int:
    stats = await redis.info("commandstats")
    return int(stats.get("cmdstat_mget", {}).get("calls", 0))


async def abandoned_read(base_url: str, token: str) -> None:
    """GET /todo, then the client goes away before the answer."""
    where = urlsplit(base_url)
    _, writer = await asyncio.open_connection(where.hostname, where.port)
    writer.write(b"GET /todo HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
                 + token.encode() + b"\r\n\r\n")
    await writer.drain()
    await asyncio.sleep(0.3)
    writer.close()
    await writer.wait_closed()


@pytest.mark.gen_test(timeout=60)
async def test_a_read_whose_client_left_stops_waiting(mongo_uri, redis_url):
    settings = make_settings(mongo_uri, redis_url)
    async with another_instance(settings) as api:
        token = await api.register("leaver")
        owner = base64.urlsafe_b64decode(token.split(".")[0] + "==").decode().split(".")[0]
        redis = Redis.from_url(redis_url)
        lock_key = f"{settings.redis_prefix}lock:{owner}"
        try:
            # Another request is loading this page (its lock is held, no page yet): a reader
            # polls Redis for it until the lock goes, two seconds at most.
            await redis.set(lock_key, b"someone", px=5000)
            await abandoned_read(api.base_url, token)
            before = await mget_calls(redis)
            await asyncio.sleep(1.0)
            # Polling would have asked 20 times more by now (every 50 ms).
            assert await mget_calls(redis) - before <= 1
            # Counted as nginx counts it (499, client closed request), not as a server error.
            metrics = (await api.get("/metrics")).body.decode()
            assert 'method="GET",route="/todo",status="499"} 1.0' in metrics
            assert 'method="GET",route="/todo",status="500"' not in metrics
        finally:
            await redis.delete(lock_key)
            await redis.aclose()
