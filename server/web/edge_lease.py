"""This instance's edge lease: `<prefix>edge-lease:<instance name>`, renewed only while the
instance trusts what Redis holds completely.

The nginx edge (conf/edge/) serves a cached first page only while the lease of EVERY instance
is present, because it cannot see an instance's own state: a write whose cache invalidation
missed Redis (queued as a repair), pages not yet dropped after an outage, revocations not yet
copied back. This instance renews its lease (PX `lease_ms`) every quarter of that while its
RedisGuard is available with no pending repair, its PageCache is trusted and its TokenService
has synced the revocations; otherwise it stops, and the lease expires on its own.

Why the lease is shorter than redis_timeout: a write whose invalidation times out answers 201
only after redis_timeout. Every renewal this instance sent before that invalidation was either
processed before it (the lease ends less than lease_ms later, so before the 201) or never
(Redis was not processing writes; redis-py gave up on it). When the invalidation fails fast
instead (a refused or reset connection), RedisGuard awaits `settle()` before the write
answers: it waits until every lease this instance may have set has expired. Either way, once a
write's reply is out, the edge can no longer serve the page it changed. During CLIENT PAUSE
WRITE, Redis (7.0) keeps expired keys but reads them as missing, so the lease still ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from redis.asyncio import Redis

from server.domain.tokens import TokenService
from server.infra.cache import PageCache
from server.infra.redis_guard import RedisGuard, done

log = logging.getLogger(__name__)
# Of redis_timeout: the lease's life. Below 1 (see above), with room for clock-rate drift.
LEASE_SHARE = 0.75


class EdgeLease:
    def __init__(
        self, *, name: str, guard: RedisGuard, cache: PageCache, tokens: TokenService,
        redis_timeout: float,
    ) -> None:
        self.guard, self.cache, self.tokens = guard, cache, tokens
        self.key = guard.key("edge-lease", name)
        self.lease = redis_timeout * LEASE_SHARE
        self.redis_timeout = redis_timeout
        self.renewals = 0
        # The latest time (monotonic) a lease set by this instance may still exist.
        self._expires_by = 0.0
        self._task: asyncio.Task[None] | None = None
        guard.on_missed_write(self.settle)

    @property
    def trusted(self) -> bool:
        """Whether this instance trusts Redis completely (what the lease stands for)."""
        return (self.guard.available and not self.guard.repairs_pending
                and self.cache.trusted and self.tokens.synced)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            if self.trusted:
                await self.renew()
            elif not self.tokens.synced:
                self.tokens.request_sync()  # at start-up, before any request asks for it
            await asyncio.sleep(self.lease / 4)

    async def renew(self) -> bool:
        lease_ms = int(self.lease * 1000)
        synced_key = self.guard.key("revocations-synced")

        async def set_lease(client: Redis) -> bool:
            async with client.pipeline(transaction=False) as pipe:
                pipe.set(self.key, b"1", px=lease_ms)
                pipe.exists(synced_key)
                _, synced = await pipe.execute()
            return bool(synced)

        # Sent now: unanswered, Redis may still apply it until redis-py gives up on it.
        self._expires_by = max(self._expires_by,
                               time.monotonic() + self.redis_timeout + self.lease)
        synced = await self.guard.run(set_lease, default=None)
        if synced is None:
            return False
        self.renewals += 1
        if not synced:
            # The marker expires (30 s) while the edge answers every read: renew it now.
            self.tokens.request_sync()
        return True

    async def settle(self) -> None:
        """Return once no lease of this instance can be left in Redis (a write missed it)."""
        wait = self._expires_by - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)

    async def close(self) -> None:
        """Stop renewing and take the lease back: the edge passes until a new one is set."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.guard.run(lambda r: done(r.delete(self.key)), default=False)
