"""The Redis cache of each user's first list page (the default query).

Read-your-writes across instances without a race: every write bumps the user's version key
and deletes the page; a reader that loaded the page from MongoDB stores it only if the version
is still the one it saw before loading (a Lua compare-and-set), so a slow reader can never put
back a page older than a write.

Stampede protection: on a miss one request takes a short Redis lock and loads from MongoDB;
the others poll Redis for the page it stores instead of querying MongoDB themselves.
"""

from __future__ import annotations

import asyncio
import logging
import random
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from functools import partial
from typing import Any

from redis.asyncio import Redis

from server.infra.cache_keys import (
    VERSION_TTL,
    as_bytes,
    first_page_keys,
    new_version,
    unwrap,
    wrap,
)
from server.infra.redis_guard import RedisGuard, UntilDone

log = logging.getLogger(__name__)

SET_IF_VERSION = """
if (redis.call('GET', KEYS[2]) or '') == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  return 1
end
return 0
"""
RELEASE_LOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
MAX_POLL_INTERVAL = 0.05
TTL_JITTER = 0.2


async def _batches(keys: AsyncIterator[Any], size: int = 500) -> AsyncIterator[list[Any]]:
    batch = []
    async for key in keys:
        batch.append(key)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


class PageCache:
    def __init__(
        self,
        guard: RedisGuard,
        *,
        ttl: float,
        lock_ttl: float = 2.0,
        poll_interval: float = 0.005,
    ) -> None:
        self.guard = guard
        self.ttl = ttl
        self.lock_ttl = lock_ttl
        self.poll_interval = poll_interval
        self._lock_ms = int(lock_ttl * 1000)
        self.hits = 0
        self.misses = 0
        self._set_if_version = guard.client.register_script(SET_IF_VERSION)
        self._release_lock = guard.client.register_script(RELEASE_LOCK)
        self._distrusted = False
        self._drop_pages = UntilDone(guard, self.drop_all_pages)
        # Per owner: the load under way in this instance, and when it started (monotonic).
        self._loading: dict[str, tuple[float, asyncio.Future[bytes]]] = {}
        guard.on_recovery(self._distrust_redis)

    def _keys(self, owner: str) -> tuple[str, str, str]:
        return first_page_keys(self.guard.prefix, owner)

    def _jittered_ttl_ms(self) -> int:
        # Spread expiries so that pages cached together do not all expire together.
        return int(self.ttl * 1000 * random.uniform(1 - TTL_JITTER, 1))  # noqa: S311

    def read_keys(self, owner: str) -> tuple[str, str]:
        """What get_or_load reads first, for a caller that reads them along with other keys."""
        return self._keys(owner)[:2]

    async def get_or_load(
        self,
        owner: str,
        load: Callable[[], Awaitable[bytes]],
        read: Sequence[Any] | None = None,
        asked_at: float | None = None,
    ) -> bytes:
        """The cached page of `owner`, loading it with `load()` at most once per miss.

        `read`: the values of read_keys(owner), if the caller already fetched them from
        Redis in this request: a fresh page there is served without another round trip.
        `asked_at`: when the request arrived (time.monotonic()); by default, now.
        """
        asked_at = time.monotonic() if asked_at is None else asked_at
        page_key, version_key, lock_key = self._keys(owner)
        if read is not None and read[0] is not None and not self._distrusted:
            fresh_until, page = unwrap(as_bytes(read[0]))
            if time.time() * 1000 < fresh_until:
                self.hits += 1
                return page
        # A miss or a stale page is decided on a read made here, just before taking the lock:
        # an older read could let a second request reload a page the first just stored.
        found = await self.guard.read_many((page_key, version_key))
        if found is None or self._distrusted:
            return await self._load_once(owner, load, asked_at)
        stored, raw_version = found
        version = as_bytes(raw_version or b"")
        if stored is not None:
            fresh_until, page = unwrap(as_bytes(stored))
            if time.time() * 1000 < fresh_until:
                self.hits += 1
                return page
            # Past its freshness: one request reloads it, the others get this previous
            # copy meanwhile. It is still the latest (a write would have deleted it), so
            # this keeps read-your-writes.
            token = secrets.token_hex(8)
            if await self._lock(lock_key, token):
                return await self._reload_unless_stored(owner, load, version, token)
            self.hits += 1
            return page
        self.misses += 1
        token = secrets.token_hex(8)
        locked = await self._lock(lock_key, token)
        if locked is None:
            return await self._load_once(owner, load, asked_at)
        if locked:
            return await self._reload_unless_stored(owner, load, version, token)
        waited = await self._wait_for_page(page_key, lock_key)
        if waited is not None:
            self.hits += 1
            return waited
        # The loader stored nothing: a write came while it loaded (so its page may miss that
        # write) or it failed. Under a stream of writes, waiting for the next loader would
        # end the same way, a load's time later each round: load now instead.
        return await self._load_once(owner, load, asked_at)

    async def _load_once(
        self, owner: str, load: Callable[[], Awaitable[bytes]], asked_at: float
    ) -> bytes:
        """`load()`, shared by every request of this instance that wants it meanwhile: without
        Redis to coordinate, a burst still costs MongoDB one query per instance, not one each.

        Only a load that started after this request asked (`asked_at`) is shared with it: one
        started before may have read MongoDB before a write acknowledged to this client."""
        loading = self._loading.get(owner)
        if loading is not None and loading[0] >= asked_at:
            return await asyncio.shield(loading[1])
        started_at = time.monotonic()
        pending = asyncio.ensure_future(load())
        self._loading[owner] = (started_at, pending)

        def forget(_: asyncio.Future[bytes]) -> None:
            if self._loading.get(owner, (0.0, None))[1] is pending:
                del self._loading[owner]

        pending.add_done_callback(forget)
        return await asyncio.shield(pending)

    async def _lock(self, lock_key: str, token: str) -> bool | None:
        """True if this request now loads the page; None when Redis is unavailable."""
        return await self.guard.run(partial(self._try_lock, lock_key, token), default=None)

    async def _try_lock(self, lock_key: str, token: str, client: Redis) -> bool:
        return bool(await client.set(lock_key, token, nx=True, px=self._lock_ms))

    async def _reload_unless_stored(self, owner: str, load: Callable[[], Awaitable[bytes]],
                                    version: bytes, token: str) -> bytes:
        stored = await self._stored_meanwhile(owner, token)
        if stored is not None:
            return stored
        return await self._load_and_store(owner, load, version, token)

    async def _stored_meanwhile(self, owner: str, token: str) -> bytes | None:
        """Just after this request took the lock: the fresh page another request stored (and
        unlocked) between this one's read and its lock, if any; the lock is then released.
        Without this look, that narrow gap costs MongoDB a second load of the same page."""
        page_key, _version_key, lock_key = self._keys(owner)
        stored = await self.guard.run(lambda r: r.get(page_key), default=None)
        if stored is None:
            return None
        fresh_until, page = unwrap(as_bytes(stored))
        if time.time() * 1000 >= fresh_until:
            return None
        await self.guard.run(
            lambda r: self._release_lock(keys=[lock_key], args=[token], client=r), default=None
        )
        self.hits += 1
        return page

    async def _load_and_store(
        self,
        owner: str,
        load: Callable[[], Awaitable[bytes]],
        version: bytes,
        token: str,
    ) -> bytes:
        page_key, version_key, lock_key = self._keys(owner)
        try:
            page = await load()
            fresh_ms = self._jittered_ttl_ms()
            # Kept past its freshness for as long again, to be served while being reloaded.
            stored = wrap(page, fresh_until=int(time.time() * 1000) + fresh_ms)
            await self.guard.run(
                lambda r: self._set_if_version(
                    keys=[page_key, version_key], args=[version, stored, 2 * fresh_ms], client=r
                ),
                default=None,
            )
            return page
        finally:
            await self.guard.run(
                lambda r: self._release_lock(keys=[lock_key], args=[token], client=r),
                default=None,
            )

    async def _wait_for_page(self, page_key: str, lock_key: str) -> bytes | None:
        """The page another request is loading, or None once that request's lock is gone
        without one.

        Only the loader first seen is waited for: under a stream of writes each loader's page
        is refused (a write came while it loaded) and the next reader takes the lock at once,
        so a waiter that waited for any lock at all would wait for its whole deadline."""
        deadline = time.monotonic() + self.lock_ttl
        interval = self.poll_interval
        holder = None
        while time.monotonic() < deadline:
            await asyncio.sleep(interval)
            # Back off: a crowd of waiters must not turn into a flood of Redis reads.
            interval = min(interval * 2, MAX_POLL_INTERVAL)
            found = await self.guard.read_many((page_key, lock_key))
            if found is None:
                return None
            stored, lock = found
            if stored is not None:
                return unwrap(as_bytes(stored))[1]
            if lock is None or (holder is not None and lock != holder):
                return None
            holder = lock
        return None

    @property
    def trusted(self) -> bool:
        """False from Redis's return after an outage until every page is dropped."""
        return not self._distrusted

    def _distrust_redis(self) -> None:
        # After an outage a write may have missed Redis (its instance can have died before
        # replaying it), and which user it touched is unknown: forget every page.
        self._distrusted = True
        self._drop_pages.request()

    async def drop_all_pages(self) -> bool:
        """Delete every cached page (True once done); until then pages come from MongoDB."""

        async def drop(client: Redis) -> int:
            dropped = 0
            async for keys in _batches(client.scan_iter(match=self.guard.key("page", "*"))):
                dropped += await client.delete(*keys)
            return dropped

        dropped = await self.guard.run(drop, default=None)
        if dropped is None:
            return False
        self._distrusted = False
        log.info("dropped %d cached pages after a Redis outage", dropped)
        return True

    async def invalidate(self, owner: str) -> None:
        """Make the next read of `owner`'s first page come from MongoDB."""
        page_key, version_key, _lock_key = self._keys(owner)

        async def bump(client: Redis) -> None:
            async with client.pipeline(transaction=True) as pipe:
                pipe.set(version_key, new_version(), ex=VERSION_TTL)
                pipe.delete(page_key)
                await pipe.execute()

        await self.guard.must(bump)
