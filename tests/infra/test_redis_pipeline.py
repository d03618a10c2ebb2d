"""The hot path's pipelined Redis reads (server/infra/redis_pipeline.py), against a real Redis:
every request gets its own reply, a hung or lost Redis fails fast, and it recovers by itself."""

from __future__ import annotations

import asyncio
import time

import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from scripts.local_services import LocalServer
from server.infra.redis_pipeline import PipelinedReads


@pytest.mark.gen_test(timeout=30)
async def test_concurrent_reads_each_get_their_own_reply(own_redis: LocalServer):
    admin = Redis(port=own_redis.port, db=3)
    await admin.mset({f"key:{n}": f"value {n}" for n in range(200)})
    # The password and the database come from the URL, as in redis_url.
    await admin.config_set("requirepass", "s3cret")
    reads = PipelinedReads(f"redis://:s3cret@127.0.0.1:{own_redis.port}/3", timeout=2)
    try:
        replies = await asyncio.gather(
            *(reads.mget(f"key:{n}", "missing", f"key:{(n + 1) % 200}") for n in range(200))
        )
        assert replies == [
            [f"value {n}".encode(), None, f"value {(n + 1) % 200}".encode()] for n in range(200)
        ]
    finally:
        await reads.close()
        await admin.execute_command("AUTH", "s3cret")
        await admin.config_set("requirepass", "")
        await admin.aclose()


@pytest.mark.gen_test(timeout=30)
async def test_a_request_that_gave_up_does_not_shift_the_others_replies(own_redis: LocalServer):
    admin = Redis(port=own_redis.port)
    await admin.mset({f"key:{n}": str(n) for n in range(100)})
    reads = PipelinedReads(f"redis://127.0.0.1:{own_redis.port}/0", timeout=2)
    try:
        await reads.mget("key:0")  # connected
        waiting = [asyncio.ensure_future(reads.mget(f"key:{n}")) for n in range(100)]
        for task in waiting[::3]:
            task.cancel()  # as a read is cancelled when its client leaves
        await asyncio.gather(*waiting, return_exceptions=True)
        for n, task in enumerate(waiting):
            if n % 3:
                assert task.result() == [str(n).encode()]
        assert await reads.mget("key:42") == [b"42"]
    finally:
        await reads.close()
        await admin.aclose()


@pytest.mark.gen_test(timeout=30)
async def test_a_hung_redis_fails_the_read_within_the_timeout_then_recovers(
    own_redis: LocalServer,
):
    admin = Redis(port=own_redis.port)
    await admin.set("key", "value")
    reads = PipelinedReads(f"redis://127.0.0.1:{own_redis.port}/0", timeout=0.3)
    try:
        assert await reads.mget("key") == [b"value"]
        await admin.execute_command("CLIENT", "PAUSE", "1500", "ALL")
        started = time.monotonic()
        with pytest.raises(RedisTimeoutError):
            await reads.mget("key")
        waited = time.monotonic() - started
        assert 0.25 < waited < 1.2  # the timeout, not the pause's end
        await asyncio.sleep(1.5)  # the pause is over
        assert await reads.mget("key") == [b"value"]
    finally:
        await reads.close()
        await admin.aclose()


@pytest.mark.gen_test(timeout=60)
async def test_redis_gone_is_a_connection_error_and_its_return_is_picked_up(
    own_redis: LocalServer,
):
    reads = PipelinedReads(f"redis://127.0.0.1:{own_redis.port}/0", timeout=1)
    lost: list[BaseException] = []
    reads.on_lost = lost.append
    try:
        assert await reads.mget("key") == [None]
        own_redis.stop()
        # Heard at once, with no read waiting: the guard must know Redis went away.
        for _ in range(100):
            if lost:
                break
            await asyncio.sleep(0.01)
        assert len(lost) == 1
        assert isinstance(lost[0], RedisConnectionError)
        with pytest.raises(RedisConnectionError):
            await reads.mget("key")
        with pytest.raises(RedisConnectionError):  # refused: no server to reconnect to
            await reads.mget("key")
        own_redis.start()
        admin = Redis(port=own_redis.port)
        await admin.set("key", "back")
        await admin.aclose()
        assert await reads.mget("key") == [b"back"]
    finally:
        await reads.close()
