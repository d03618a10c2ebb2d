"""The brute-force defence of log-ins: POST /tokens and POST /session share it.

Wrong passwords are counted per username, whatever address they come from, in Redis, so that
every instance adds to and reads the same count. The FAILURE_LIMIT-th failure within WINDOW
seconds of the first locks the username for WINDOW seconds from then: every log-in of it,
with the right password too, is a 429 with Retry-After and one message, so a guesser learns
nothing during the lockout. Other usernames are unaffected. Unknown usernames are counted like
known ones (their answers must not differ). The limits are the named constants below (not
settings: server/infra/settings.py is full, and nobody has needed to tune them yet).

Redis down: each instance counts in its own memory instead (bounded, oldest forgotten first),
so log-ins are never left unthrottled, but the limit is then per instance (N instances allow
up to N x FAILURE_LIMIT failures a window), and neither count is carried into the other when
Redis comes and goes.
"""

from __future__ import annotations

import hashlib
import math
import time

from redis.asyncio import Redis

from server.domain.errors import TooManyRequests
from server.infra.redis_guard import RedisGuard

FAILURE_LIMIT = 20
WINDOW = 60  # seconds
MEMORY_ENTRIES = 10_000  # usernames counted in memory while Redis is down
TOO_MANY_LOGINS = "too many failed log-ins for this username; try again later"
# Usernames up to this length name their key as they are (an operator can unlock one with
# DEL); a longer one, which cannot be a registered user's, is hashed to bound the key's size.
PLAIN_KEY_LENGTH = 64


class LoginThrottle:
    def __init__(
        self, guard: RedisGuard, *, limit: int = FAILURE_LIMIT, window: int = WINDOW
    ) -> None:
        self.guard = guard
        self.limit = limit
        self.window = window
        # username -> (failures, monotonic time its window ends): the fallback count.
        self._local: dict[str, tuple[int, float]] = {}

    def _key(self, username: str) -> str:
        if len(username) > PLAIN_KEY_LENGTH:
            username = "sha256:" + hashlib.sha256(username.encode("utf-8", "replace")).hexdigest()
        return self.guard.key("login-failures", username)

    async def check(self, username: str) -> None:
        """A 429 while `username` is locked out; before its password is even looked at."""
        key = self._key(username)

        async def read(client: Redis) -> tuple[int, float]:
            async with client.pipeline(transaction=False) as pipe:
                pipe.get(key)
                pipe.ttl(key)
                failures, ttl = await pipe.execute()
            return int(failures or 0), float(ttl if ttl > 0 else self.window)

        found = await self.guard.run(read, default=None)
        failures, left = found if found is not None else self._local_state(username)
        if failures >= self.limit:
            raise TooManyRequests(TOO_MANY_LOGINS, retry_after=max(1, math.ceil(left)))

    async def failed(self, username: str) -> None:
        """Count a wrong password for `username`."""
        key = self._key(username)

        async def count(client: Redis) -> bool:
            # One transaction: a counter is never left without its expiry.
            async with client.pipeline(transaction=True) as pipe:
                pipe.incr(key)
                pipe.expire(key, self.window, nx=True)
                failures, _ = await pipe.execute()
            if failures == self.limit:
                # Locked from now for a whole window, however late in the window it came.
                await client.expire(key, self.window)
            return True

        if not await self.guard.run(count, default=False):
            self._count_locally(username)

    def _local_state(self, username: str) -> tuple[int, float]:
        failures, until = self._local.get(username, (0, 0.0))
        left = until - time.monotonic()
        return (failures, left) if left > 0 else (0, 0.0)

    def _count_locally(self, username: str) -> None:
        failures, left = self._local_state(username)
        failures += 1
        until = time.monotonic() + (left if left > 0 else self.window)
        if failures == self.limit:
            until = time.monotonic() + self.window
        self._local.pop(username, None)
        self._local[username] = (failures, until)
        while len(self._local) > MEMORY_ENTRIES:
            del self._local[next(iter(self._local))]
