"""An instance's edge lease stands for "I trust Redis completely": it is set only then, it goes
as soon as that stops, and a write that missed Redis answers only once no lease of its
instance is left (server/web/edge_lease.py)."""

from __future__ import annotations

import asyncio
import time

import pytest
from redis import Redis as SyncRedis
from redis.asyncio import Redis

from server.web.edge_lease import EdgeLease
from tests.conftest import make_settings, start_services, stop_services


@pytest.fixture
def lease_services(io_loop, mongo_uri, own_redis):
    settings = make_settings(mongo_uri, f"redis://127.0.0.1:{own_redis.port}/0",
                             redis_timeout=0.4)
    services = start_services(io_loop, settings)
    yield services
    stop_services(io_loop, services)


def lease_of(services) -> EdgeLease:
    return EdgeLease(name="test-instance", guard=services.redis, cache=services.cache,
                     tokens=services.tokens, redis_url=services.settings.redis_url,
                     redis_timeout=services.settings.redis_timeout)


async def until(condition, attempts=200):
    for _ in range(attempts):
        if await condition():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("never happened")


@pytest.mark.gen_test(timeout=30)
async def test_the_lease_is_held_only_once_revocations_are_synced(lease_services):
    redis = lease_services.redis.client
    lease = lease_of(lease_services)
    assert not lease_services.tokens.synced
    assert not lease.trusted
    lease.start()
    try:
        # The instance syncs by itself (no request needed), then holds a lease shorter than
        # its Redis timeout.
        await until(lambda: redis.exists(lease.key))
        assert 0 < await redis.pttl(lease.key) <= 300
        assert await redis.exists(lease_services.redis.key("revocations-synced"))
    finally:
        await lease.close()
    assert not await redis.exists(lease.key)  # a clean stop gives it back at once


@pytest.mark.gen_test(timeout=30)
async def test_a_write_that_missed_redis_answers_after_the_lease_is_gone(lease_services):
    admin = Redis(port=lease_services.redis.client.connection_pool.connection_kwargs["port"])
    lease = lease_of(lease_services)
    lease.start()
    await until(lambda: admin.exists(lease.key))
    try:
        await admin.execute_command("CLIENT", "PAUSE", "3000", "WRITE")
        # The invalidation times out; renewals are stuck behind the pause as well.
        await lease_services.cache.invalidate("0" * 24)
        assert lease_services.redis.repairs_pending
        assert not lease.trusted
        # Reads still work during the pause: the lease already reads as gone, so nginx
        # would pass this user's next read to an instance.
        assert not await admin.exists(lease.key)
    finally:
        await admin.execute_command("CLIENT", "UNPAUSE")
        await lease.close()
        await admin.aclose()


def watch_while_blocking(observer: SyncRedis, key: str, *, seconds: float) -> list[bool]:
    """Whether `key` exists, every few ms for `seconds`, holding up the caller's event loop."""
    seen, until_time = [], time.monotonic() + seconds
    while time.monotonic() < until_time:
        seen.append(bool(observer.exists(key)))
        time.sleep(0.01)
    return seen


@pytest.mark.gen_test(timeout=30)
async def test_the_lease_outlives_an_event_loop_held_up_for_several_of_its_lives(lease_services):
    # An instance swamped by a burst the edge passed on must keep its lease, or the edge
    # would pass everything on and the burst would feed itself.
    port = lease_services.redis.client.connection_pool.connection_kwargs["port"]
    lease = lease_of(lease_services)
    lease.start()
    observer = SyncRedis(port=port)
    try:
        await until(lambda: lease_services.redis.client.exists(lease.key))
        seen = watch_while_blocking(observer, lease.key, seconds=4 * lease.lease)
        assert len(seen) > 30
        assert all(seen)
    finally:
        observer.close()
        await lease.close()


@pytest.mark.gen_test(timeout=30)
async def test_the_synced_marker_is_rebuilt_before_it_expires(lease_services):
    # Gone for a moment, it would send every read past the edge to MongoDB until rebuilt.
    redis = lease_services.redis.client
    synced_key = lease_services.redis.key("revocations-synced")
    lease = lease_of(lease_services)
    lease.start()
    try:
        await until(lambda: redis.exists(synced_key))
        await redis.pexpire(synced_key, 5000)  # as it stands 25 s after a rebuild
        await until(lambda: _pttl_above(redis, synced_key, 5000))
    finally:
        await lease.close()


async def _pttl_above(redis: Redis, key: str, ms: int) -> bool:
    return await redis.pttl(key) > ms
