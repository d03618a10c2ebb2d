"""The Redis first-page cache: read-your-writes, stampede protection, jitter, no stale put-back."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest

from server.infra.cache_keys import first_page_keys
from tests.conftest import QueryCounter, another_instance

# Run against one instance and through nginx (tests/conftest.py).
pytestmark = pytest.mark.contract


async def create(api, token, content):
    reply = await api.post("/todo", token=token, json_body={"content": content})
    assert reply.status == 201, reply.json
    return reply.json


async def first_page(api, token):
    reply = await api.get("/todo", token=token)
    assert reply.status == 200, reply.json
    return reply.json["data"]


@pytest.mark.gen_test
async def test_every_write_shows_in_the_next_cached_read(api):
    token = await api.register("writer")
    todo = await create(api, token, "first")
    assert [t["content"] for t in await first_page(api, token)] == ["first"]

    await create(api, token, "second")
    assert [t["content"] for t in await first_page(api, token)] == ["second", "first"]

    await api.patch(f"/todo/{todo['id']}", token=token, json_body={"content": "first, edited"})
    assert (await first_page(api, token))[1]["content"] == "first, edited"

    await api.put(f"/todo/{todo['id']}/finish", token=token)
    assert (await first_page(api, token))[1]["is_finished"] is True

    await api.delete(f"/todo/{todo['id']}", token=token)
    assert [t["content"] for t in await first_page(api, token)] == ["second"]


@pytest.mark.gen_test
async def test_repeated_reads_are_served_from_redis_not_mongodb(api, query_counter):
    token = await api.register("reader")
    await create(api, token, "cached")
    await first_page(api, token)
    before = query_counter.finds
    for _ in range(20):
        assert [t["content"] for t in await first_page(api, token)] == ["cached"]
    assert query_counter.finds == before


@pytest.mark.gen_test
async def test_other_queries_bypass_the_cache(api, query_counter):
    token = await api.register("bypass")
    await create(api, token, "x")
    for path in ("/todo?limit=5", "/todo?finished=false", "/todo?start=0&limit=11"):
        before = query_counter.finds
        assert (await api.get(path, token=token)).status == 200
        assert query_counter.finds == before + 1, path


@pytest.mark.gen_test
async def test_fifty_concurrent_misses_query_mongodb_once(api, query_counter):
    token = await api.register("stampede")
    for i in range(15):
        await create(api, token, f"todo {i}")
    before = query_counter.finds
    replies = await asyncio.gather(*(api.get("/todo", token=token) for _ in range(50)))
    assert {reply.status for reply in replies} == {200}
    assert all(reply.json == replies[0].json for reply in replies)
    assert len(replies[0].json["data"]) == 10
    assert query_counter.finds - before == 1


@pytest.mark.gen_test
async def test_a_write_on_one_instance_is_read_on_another(api, services):
    """Read-your-writes across instances: no in-process state decides freshness."""
    async with another_instance(services.settings) as other_api:
        token = await api.register("roamer")
        await create(api, token, "one")
        assert [t["content"] for t in await first_page(other_api, token)] == ["one"]
        await create(other_api, token, "two")
        assert [t["content"] for t in await first_page(api, token)] == ["two", "one"]
        reply = await api.get("/todo", token=token)
        await other_api.put(f"/todo/{reply.json['data'][0]['id']}/finish", token=token)
        assert (await first_page(api, token))[0]["is_finished"] is True


@pytest.mark.gen_test
async def test_cached_pages_expire_with_jitter(api, services):
    ttls = set()
    for i in range(6):
        token = await api.register(f"jitter{i}")
        await create(api, token, "x")
        await first_page(api, token)
    client = services.redis.client
    async for key in client.scan_iter(f"{services.settings.redis_prefix}page:*"):
        ttls.add(await client.pttl(key))
    # Kept twice its (jittered) freshness: fresh, then served while being reloaded.
    ceiling = 2 * services.settings.cache_ttl * 1000
    assert len(ttls) == 6
    assert all(0.7 * ceiling < ttl <= ceiling for ttl in ttls)
    assert len(ttls) > 1


@pytest.mark.gen_test
async def test_while_an_expired_page_reloads_others_get_the_previous_copy_at_once(services):
    cache = services.cache
    cache.ttl = 1
    assert await cache.get_or_load("reader", _returning(b"previous")) == b"previous"
    # Past its freshness (1 s), within its life (2 s), with room for a busy machine.
    await asyncio.sleep(1.3)
    reloading = asyncio.Event()
    release = asyncio.Event()

    async def slow_reload() -> bytes:
        reloading.set()
        await release.wait()
        return b"reloaded"

    reload = asyncio.ensure_future(cache.get_or_load("reader", slow_reload))
    await reloading.wait()
    # The reload is under way and holds the lock: another reader does not wait for it.
    assert await cache.get_or_load("reader", _returning(b"never loaded")) == b"previous"
    release.set()
    assert await reload == b"reloaded"
    assert await cache.get_or_load("reader", _returning(b"never loaded")) == b"reloaded"


def _returning(value: bytes):
    async def load() -> bytes:
        return value

    return load


@pytest.mark.gen_test(timeout=60)
async def test_an_expired_page_is_reloaded_once_while_the_others_get_it_at_once(services):
    counter = QueryCounter()
    short_lived = dataclasses.replace(services.settings, cache_ttl=2)
    async with another_instance(short_lived, listener=counter) as api:
        token = await api.register("expiring")
        await create(api, token, "steady")
        await first_page(api, token)
        # Past its freshness (1.6-2 s), well within its life in Redis (3.2-4 s): stale.
        await asyncio.sleep(2.2)
        # Changed behind the service's back, so that a reloaded page can be told apart.
        await services.db["todos"].update_many({}, {"$set": {"content": "reloaded"}})
        before = counter.finds
        replies = await asyncio.gather(*(api.get("/todo", token=token) for _ in range(30)))
        assert {reply.status for reply in replies} == {200}
        assert {reply.json["data"][0]["content"] for reply in replies} <= {"steady", "reloaded"}
        assert counter.finds - before == 1
        assert (await first_page(api, token))[0]["content"] == "reloaded"
        await create(api, token, "after")  # a write still shows at once
        assert [t["content"] for t in await first_page(api, token)] == ["after", "reloaded"]


@pytest.mark.gen_test
async def test_a_page_loaded_before_a_write_is_never_stored_after_it(services):
    """A slow reader racing a writer cannot put an outdated page back into the cache."""
    cache = services.cache
    loads = []

    async def slow_load_with_write_in_between() -> bytes:
        loads.append("slow")
        await cache.invalidate("racer")  # a write lands while this reader is loading
        return b"outdated page"

    async def fresh_load() -> bytes:
        loads.append("fresh")
        return b"fresh page"

    assert await cache.get_or_load("racer", slow_load_with_write_in_between) == b"outdated page"
    assert await cache.get_or_load("racer", fresh_load) == b"fresh page"
    assert await cache.get_or_load("racer", fresh_load) == b"fresh page"
    assert loads == ["slow", "fresh"]


@pytest.mark.gen_test(timeout=30)
async def test_a_load_is_shared_only_with_readers_that_asked_before_it_started(services):
    """Readers that cannot use Redis (here: another holds the lock and stores nothing) share
    one load per instance, but never one that began before they asked: it may have read
    MongoDB before a write acknowledged to their client."""
    cache = services.cache
    client = services.redis.client
    _page_key, _version_key, lock_key = first_page_keys(services.settings.redis_prefix, "sharer")
    loads: list[str] = []
    began = [asyncio.Event(), asyncio.Event()]  # the first load, the second
    release = asyncio.Event()

    def loading(name: str):
        async def load() -> bytes:
            loads.append(name)
            began[min(len(loads), 2) - 1].set()
            await release.wait()
            return name.encode()
        return load

    # Another instance's loader holds the lock for 0.3 s and stores nothing (as when a write
    # lands while it loads): the waiters then load themselves.
    await client.set(lock_key, b"another instance", px=300)
    first = asyncio.ensure_future(cache.get_or_load("sharer", loading("first")))
    burst = asyncio.ensure_future(cache.get_or_load("sharer", loading("burst")))
    await began[0].wait()
    # The same again for a reader who asks once those loads are under way.
    await client.set(lock_key, b"another instance", px=300)
    later = asyncio.ensure_future(cache.get_or_load("sharer", loading("later")))
    await began[1].wait()
    release.set()
    assert len(loads) == 2
    assert loads[1] == "later"
    # The burst asked before the first load began: they share it, whichever started it.
    assert await first == await burst == loads[0].encode()
    assert await later == b"later"  # asked after: a load of its own
