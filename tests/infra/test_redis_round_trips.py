"""A cached first page costs one Redis round trip: the token's revocation and the page together."""

from __future__ import annotations

import pytest
from redis.asyncio import Redis

from scripts.local_services import LocalServer
from server.infra.settings import Settings
from tests.conftest import make_settings
from tests.infra.test_redis_faults import contents


@pytest.fixture
def settings(mongo_uri: str, own_redis: LocalServer) -> Settings:
    return make_settings(mongo_uri, f"redis://127.0.0.1:{own_redis.port}/0")


async def commands_by_name(redis: Redis) -> dict[str, int]:
    """How many times the (test's own) Redis ran each command so far."""
    stats = await redis.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(entry["calls"]) for name, entry in stats.items()}


@pytest.mark.gen_test(timeout=60)
async def test_a_cached_first_page_is_one_mget(api, own_redis: LocalServer):
    token = await api.register("one-trip")
    await api.post("/todo", token=token, json_body={"content": "cached"})
    assert await contents(api, token) == ["cached"]  # loads and caches the page
    redis = Redis(port=own_redis.port)
    try:
        before = await commands_by_name(redis)
        for _ in range(5):
            assert await contents(api, token) == ["cached"]
        after = await commands_by_name(redis)
    finally:
        await redis.aclose()
    ran = {name: after[name] - before.get(name, 0) for name in after} | {"info": 0}
    assert {name: calls for name, calls in ran.items() if calls} == {"mget": 5}
