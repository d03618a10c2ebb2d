"""Redis trouble is never a 5xx: requests fall back to MongoDB and Redis is trusted again
only once every write it missed has been replayed."""

from __future__ import annotations

import asyncio

import pytest
from redis.asyncio import Redis

from scripts.local_services import LocalServer
from server.infra.settings import Settings
from tests.conftest import make_settings


@pytest.fixture
def settings(mongo_uri: str, own_redis: LocalServer) -> Settings:
    return make_settings(mongo_uri, f"redis://127.0.0.1:{own_redis.port}/0")


async def contents(api, token):
    reply = await api.get("/todo", token=token)
    assert reply.status == 200, reply.json
    return [todo["content"] for todo in reply.json["data"]]


async def until_ready(api, attempts=50):
    for _ in range(attempts):
        reply = await api.get("/readyz")
        if reply.status == 200:
            return reply
        await asyncio.sleep(0.2)
    return reply


@pytest.mark.gen_test(timeout=60)
async def test_redis_down_serves_from_mongodb_and_recovers(api, own_redis):
    token = await api.register("survivor")
    await api.post("/todo", token=token, json_body={"content": "before"})
    assert await contents(api, token) == ["before"]  # now cached

    own_redis.stop()
    assert await contents(api, token) == ["before"]
    created = await api.post("/todo", token=token, json_body={"content": "during"})
    assert created.status == 201
    assert await contents(api, token) == ["during", "before"]
    finished = await api.put(f"/todo/{created.json['id']}/finish", token=token)
    assert finished.status == 200
    not_ready = await api.get("/readyz")
    assert not_ready.status == 503
    assert not_ready.json["checks"] == {"mongodb": "ok", "redis": "unavailable"}
    assert "redis" in not_ready.json["error"]["message"]

    own_redis.start()
    assert (await until_ready(api)).status == 200
    assert await contents(api, token) == ["during", "before"]
    await api.post("/todo", token=token, json_body={"content": "after"})
    assert await contents(api, token) == ["after", "during", "before"]


@pytest.mark.gen_test(timeout=60)
async def test_a_write_redis_missed_is_replayed_before_the_cache_is_trusted(api, own_redis):
    """Redis answers reads but stalls writes: the invalidation times out, the cached page
    still holds the old list, and yet no read ever shows that stale page."""
    token = await api.register("stalled")
    await api.post("/todo", token=token, json_body={"content": "old"})
    assert await contents(api, token) == ["old"]  # cached

    admin = Redis(port=own_redis.port)
    try:
        await admin.execute_command("CLIENT", "PAUSE", "2500", "WRITE")
        created = await api.post("/todo", token=token, json_body={"content": "new"})
        assert created.status == 201
        # Read all through the pause and past its end, when the stale page is readable again.
        for _ in range(70):
            assert await contents(api, token) == ["new", "old"]
            await asyncio.sleep(0.05)
    finally:
        await admin.execute_command("CLIENT", "UNPAUSE")
        await admin.aclose()


@pytest.mark.gen_test(timeout=60)
async def test_redis_restarted_empty_does_not_forget_a_logout(api, own_redis):
    token = await api.register("leaver")
    assert (await api.delete("/tokens/current", token=token)).status == 204
    own_redis.stop()
    own_redis.start()
    assert (await until_ready(api)).status == 200
    assert (await api.get("/todo", token=token)).status == 401


@pytest.mark.gen_test(timeout=60)
async def test_without_redis_a_burst_still_costs_mongodb_one_query(api, own_redis, query_counter):
    token = await api.register("burst")
    await api.post("/todo", token=token, json_body={"content": "one"})
    own_redis.stop()
    await contents(api, token)  # notices Redis is gone
    before = query_counter.finds
    replies = await asyncio.gather(*(api.get("/todo", token=token) for _ in range(30)))
    assert {reply.status for reply in replies} == {200}
    assert {reply.json["data"][0]["content"] for reply in replies} == {"one"}
    assert query_counter.finds - before < 30 / 2  # shared loads, not one query per request
