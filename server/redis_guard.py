"""Redis as an optional accelerator: every call has a fallback, and Redis trouble is never a 5xx.

After a failure the guard stops asking Redis for a short cool-down, so an outage costs requests
nothing (they go to MongoDB) instead of a timeout each. Writes that must reach Redis to keep it
truthful (cache invalidations, token revocations) are queued as repairs and replayed, in order,
before Redis is trusted again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from redis.asyncio import Redis
from redis.exceptions import RedisError

log = logging.getLogger(__name__)

T = TypeVar("T")
RedisCall = Callable[[Redis], Awaitable[Any]]
MAX_PENDING_REPAIRS = 10_000


class RedisGuard:
    def __init__(self, client: Redis, *, prefix: str, cooldown: float = 1.0) -> None:
        self.client = client
        self.prefix = prefix
        self.cooldown = cooldown
        self.errors = 0
        self._down_until = 0.0
        self._repairs: deque[RedisCall] = deque(maxlen=MAX_PENDING_REPAIRS)
        self._repair_lock = asyncio.Lock()
        self._repair_task: asyncio.Task[None] | None = None

    def key(self, *parts: str) -> str:
        return self.prefix + ":".join(parts)

    @property
    def available(self) -> bool:
        return time.monotonic() >= self._down_until

    def _failed(self, exc: BaseException) -> None:
        self.errors += 1
        if self.available:
            log.warning("redis unavailable, serving without it for %.1fs: %s", self.cooldown, exc)
        self._down_until = time.monotonic() + self.cooldown

    async def run(self, call: Callable[[Redis], Awaitable[T]], *, default: T) -> T:
        """`call(client)`, or `default` when Redis is failing or has unreplayed repairs."""
        if not self.available or not await self._replay_repairs():
            return default
        try:
            return await call(self.client)
        except (TimeoutError, RedisError, OSError) as exc:
            self._failed(exc)
            return default

    async def must(self, call: RedisCall) -> None:
        """Run a write that Redis must eventually see; on failure it is queued and replayed."""
        if self.available and await self._replay_repairs():
            try:
                await call(self.client)
                return
            except (TimeoutError, RedisError, OSError) as exc:
                self._failed(exc)
        self._repairs.append(call)
        if self._repair_task is None or self._repair_task.done():
            self._repair_task = asyncio.create_task(self._repair_in_background())

    async def _replay_repairs(self) -> bool:
        """True when no repair is pending (replaying them first if needed)."""
        if not self._repairs:
            return True
        async with self._repair_lock:
            while self._repairs:
                try:
                    await self._repairs[0](self.client)
                except (TimeoutError, RedisError, OSError) as exc:
                    self._failed(exc)
                    return False
                self._repairs.popleft()
        log.info("redis is back; pending writes replayed")
        return True

    async def _repair_in_background(self) -> None:
        while self._repairs:
            await asyncio.sleep(self.cooldown)
            await self._replay_repairs()

    async def ping(self) -> bool:
        try:
            return bool(await self.client.ping())
        except (TimeoutError, RedisError, OSError) as exc:
            self._failed(exc)
            return False

    async def close(self) -> None:
        if self._repair_task is not None:
            self._repair_task.cancel()
        await self.client.aclose()
