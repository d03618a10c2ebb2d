"""Redis as an optional accelerator: every call has a fallback, and Redis trouble is never a 5xx.

After a failure the guard stops asking Redis for a short cool-down, so an outage costs requests
nothing (they go to MongoDB) instead of a timeout each. Writes that must reach Redis to keep it
truthful (cache invalidations, token revocations) are queued as repairs and replayed, in order,
before Redis is trusted again. When Redis answers again after a failure, recovery hooks run:
they repair what another instance may have queued and lost (it may have died meanwhile).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any, TypeVar

from redis.asyncio import Redis
from redis.exceptions import RedisError

from server.infra.redis_pipeline import PipelinedReads

log = logging.getLogger(__name__)

T = TypeVar("T")
RedisCall = Callable[[Redis], Awaitable[Any]]
# Called inline, before the call that found Redis back returns its result: a hook can mark
# what Redis holds as untrusted before anyone reads it, then repair it in the background.
RecoveryHook = Callable[[], None]
# Awaited when a write that must reach Redis missed it, before the write answers (the edge
# lease waits there until nginx can no longer serve what the write changed).
MissedWriteHook = Callable[[], Awaitable[None]]
MAX_PENDING_REPAIRS = 10_000
REDIS_FAILURES = (RedisError, OSError, asyncio.TimeoutError)


class RedisGuard:
    def __init__(
        self, client: Redis, *, prefix: str, cooldown: float = 1.0,
        reads: PipelinedReads | None = None,
    ) -> None:
        self.client = client
        # The hot path's reads (every request's MGET), pipelined on a connection of their own.
        self.reads = reads
        if reads is not None:
            reads.on_lost = self._failed
        self.prefix = prefix
        self.cooldown = cooldown
        self.errors = 0
        self._down_until = 0.0
        self._failed_since_success = False
        self._repairs: deque[RedisCall] = deque(maxlen=MAX_PENDING_REPAIRS)
        self._repair_lock = asyncio.Lock()
        self._recovery_hooks: list[RecoveryHook] = []
        self._missed_write_hooks: list[MissedWriteHook] = []
        self._tasks: set[asyncio.Task[None]] = set()

    def key(self, *parts: str) -> str:
        return self.prefix + ":".join(parts)

    @property
    def available(self) -> bool:
        return time.monotonic() >= self._down_until

    @property
    def repairs_pending(self) -> bool:
        return bool(self._repairs)

    def on_missed_write(self, hook: MissedWriteHook) -> None:
        """Await `hook()` after queueing a write that missed Redis, before must() returns."""
        self._missed_write_hooks.append(hook)

    def on_recovery(self, hook: RecoveryHook) -> None:
        """Call `hook()` each time Redis answers again after a failure."""
        self._recovery_hooks.append(hook)

    def spawn(self, work: Coroutine[Any, Any, None]) -> None:
        """Background work that is cancelled at close and never lost to garbage collection."""
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def report_failure(self, exc: BaseException) -> None:
        """A call made without the guard failed (another thread may say so: plain writes)."""
        self._failed(exc)

    def _failed(self, exc: BaseException) -> None:
        self.errors += 1
        if self.available:
            log.warning("redis unavailable, serving without it for %.1fs: %s", self.cooldown, exc)
        self._down_until = time.monotonic() + self.cooldown
        self._failed_since_success = True

    def _succeeded(self) -> None:
        if self._failed_since_success:
            self._failed_since_success = False
            log.info("redis answers again")
            for hook in self._recovery_hooks:
                hook()

    async def run(self, call: Callable[[Redis], Awaitable[T]], *, default: T) -> T:
        """`call(client)`, or `default` when Redis is failing or has unreplayed repairs."""
        if not self.available or (self._repairs and not await self._replay_repairs()):
            return default
        try:
            result = await call(self.client)
        except REDIS_FAILURES as exc:
            self._failed(exc)
            return default
        self._succeeded()
        return result

    async def read_many(self, keys: Sequence[str]) -> list[Any] | None:
        """MGET `keys` (a request's one read of Redis), or None when Redis is failing."""
        reads = self.reads
        if reads is None:
            return await self.run(lambda client: client.mget(keys), default=None)
        return await self.run(lambda _client: reads.mget(*keys), default=None)

    async def must(self, call: RedisCall) -> None:
        """Run a write that Redis must eventually see; on failure it is queued and replayed."""
        if await self.run(lambda client: done(call(client)), default=False):
            return
        self._repairs.append(call)
        if len(self._repairs) == 1:
            self.spawn(self._repair_in_background())
        for hook in self._missed_write_hooks:
            await hook()

    async def _replay_repairs(self) -> bool:
        """True when no repair is pending (replaying them first if needed)."""
        if not self._repairs:
            return True
        async with self._repair_lock:
            while self._repairs:
                try:
                    await self._repairs[0](self.client)
                except REDIS_FAILURES as exc:
                    self._failed(exc)
                    return False
                self._repairs.popleft()
        self._succeeded()
        return True

    async def _repair_in_background(self) -> None:
        while self._repairs:
            await asyncio.sleep(self.cooldown)
            await self._replay_repairs()

    async def ping(self) -> bool:
        try:
            await self.client.ping()
        except REDIS_FAILURES as exc:
            self._failed(exc)
            return False
        self._succeeded()
        return True

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.reads is not None:
            await self.reads.close()
        await self.client.aclose()


class UntilDone:
    """Background work retried once per cool-down until it reports success, one run at a time.
    Asking while it runs asks for one more run after it (what it read may be outdated)."""

    def __init__(self, guard: RedisGuard, attempt: Callable[[], Awaitable[bool]]) -> None:
        self.guard = guard
        self.attempt = attempt
        self._running = False
        self._again = False

    def request(self) -> None:
        if self._running:
            self._again = True
            return
        self._running = True
        self.guard.spawn(self._run())

    async def _run(self) -> None:
        try:
            while True:
                self._again = False
                if await self.attempt():
                    if not self._again:
                        return
                else:
                    await asyncio.sleep(self.guard.cooldown)
        finally:
            self._running = False


async def done(pending: Awaitable[Any]) -> bool:
    """Await `pending` and answer True: turns a write into a success flag for run()."""
    await pending
    return True
