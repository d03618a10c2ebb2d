"""An instance's edge lease stands for "I trust Redis completely": it is set only then, it goes
as soon as that stops, and a write that missed Redis answers only once no lease of its
instance is left (server/web/edge_lease.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis.asyncio import Redis

from scripts.local_services import LocalServer, free_port, redis_server
from server.web.edge_lease import EdgeLease
from tests.conftest import make_settings, start_services, stop_services


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[LocalServer]:
    server = redis_server(tmp_path / "redis", free_port())
    server.start()
    yield server
    server.stop()


@pytest.fixture
def lease_services(io_loop, mongo_uri, own_redis):
    settings = make_settings(mongo_uri, f"redis://127.0.0.1:{own_redis.port}/0",
                             redis_timeout=0.4)
    services = start_services(io_loop, settings)
    yield services
    stop_services(io_loop, services)


def lease_of(services) -> EdgeLease:
    return EdgeLease(name="test-instance", guard=services.redis, cache=services.cache,
                     tokens=services.tokens, redis_timeout=services.settings.redis_timeout)


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
