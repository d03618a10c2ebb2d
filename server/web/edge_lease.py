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
import logging
import threading
import time
from collections.abc import Callable

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from server.domain.tokens import SYNCED_TTL, TokenService
from server.infra.cache import PageCache
from server.infra.redis_guard import RedisGuard, done

log = logging.getLogger(__name__)
# Of redis_timeout: the lease's life. Below 1 (see above), with room for clock-rate drift.
LEASE_SHARE = 0.75
RENEWALS_PER_LEASE = 4


class EdgeLease:
    """Renewed by a thread of its own, with a blocking Redis client of its own: an event loop
    behind by more than the lease's life (a burst the edge passed on) must not lose the lease,
    or the edge would pass every read on and make the burst worse. The thread only reads the
    loop's state; a lock orders its check-and-record against settle()."""

    def __init__(
        self, *, name: str, guard: RedisGuard, cache: PageCache, tokens: TokenService,
        redis_url: str, redis_timeout: float,
    ) -> None:
        self.guard, self.cache, self.tokens = guard, cache, tokens
        self.key = guard.key("edge-lease", name)
        self.lease = redis_timeout * LEASE_SHARE
        self.redis_timeout = redis_timeout
        self.renewals = 0
        self._client = redis.Redis.from_url(
            redis_url, socket_timeout=redis_timeout, socket_connect_timeout=redis_timeout,
            retry=Retry(NoBackoff(), 0),
        )
        # The latest time (monotonic) a lease set by this instance may still exist.
        self._expires_by = 0.0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        guard.on_missed_write(self.settle)

    @property
    def trusted(self) -> bool:
        """Whether this instance trusts Redis completely (what the lease stands for)."""
        return (self.guard.available and not self.guard.repairs_pending
                and self.cache.trusted and self.tokens.synced)

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._run, name="edge-lease", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            if not self.renew() and not self.tokens.synced:
                self._on_loop(self.tokens.request_sync)  # at start-up, before any request
            self._stop.wait(self.lease / RENEWALS_PER_LEASE)

    def _on_loop(self, callback: Callable[[], None]) -> None:
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(callback)

    def renew(self) -> bool:
        """Set the lease if this instance trusts Redis (blocking: runs in the lease thread)."""
        with self._lock:
            if not self.trusted:
                return False
            # Sent now: unanswered, Redis may still apply it until redis-py gives up on it.
            self._expires_by = max(self._expires_by,
                                   time.monotonic() + self.redis_timeout + self.lease)
        try:
            with self._client.pipeline(transaction=False) as pipe:
                pipe.set(self.key, b"1", px=int(self.lease * 1000))
                pipe.pttl(self.guard.key("revocations-synced"))
                _, synced_ms = pipe.execute()
        except (redis.RedisError, OSError) as exc:
            # As if a request's call had failed: this instance stops reading Redis for the
            # cool-down, and then drops every page before it trusts them again. Other instances'
            # writes rely on that: a Redis that stops writing (CLIENT PAUSE WRITE) still answers
            # reads, and only a failed renewal tells this instance that another's invalidation
            # may be missing (it answers after its own lease is gone, later than this fails).
            self.guard.report_failure(exc)
            return False
        self.renewals += 1
        if synced_ms < SYNCED_TTL * 1000 / 3:
            # The marker expires (30 s) while the edge answers every read: rebuild it before
            # it goes (missing, it reads -2), or every read would pass on until it is back.
            self._on_loop(self.tokens.request_sync)
        return True

    async def settle(self) -> None:
        """Return once no lease of this instance can be left in Redis (a write missed it).

        The write's guard already counts a repair, so no renewal starts after this lock."""
        with self._lock:
            wait = self._expires_by - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)

    async def close(self) -> None:
        """Stop renewing and take the lease back: the edge passes until a new one is set."""
        self._stop.set()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join)
        self._client.close()
        await self.guard.run(lambda r: done(r.delete(self.key)), default=False)
