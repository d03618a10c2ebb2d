"""Each instance makes sure the indexes its writes rely on exist, from its start."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

from pymongo import IndexModel
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import ConnectionFailure, PyMongoError

from server.domain.errors import ServiceUnavailable

log = logging.getLogger("todo.indexes")


IndexPlan = dict[str, list[IndexModel]]


async def make_indexes(
    db: AsyncDatabase[dict[str, Any]], plan: IndexPlan,
    made: Callable[[str], None] | None = None,
) -> list[str]:
    """Create the plan's indexes, collection by collection (idempotent); returns their names
    as `collection.index`. `made` is told each collection as soon as its indexes exist."""
    created: list[str] = []
    for collection, models in plan.items():
        names = await db[collection].create_indexes(models)
        created.extend(f"{collection}.{name}" for name in names)
        if made is not None:
            made(collection)
    return created


INDEXES_PENDING = "the database is still being prepared (its indexes are being built); try again"
# Between attempts while MongoDB cannot be reached at start-up.
RETRY_SECONDS = (0.5, 1.0, 2.0, 5.0)


class IndexKeeper:
    """Makes sure the indexes exist, from the instance's start, without holding it up.

    The unique indexes are what keeps usernames and Idempotency-Keys unique, so the service
    cannot leave them to an out-of-band step: each instance creates them when it starts, in
    the background (its readiness does not wait for a build on a large collection). Creating
    existing indexes costs a few milliseconds, and several instances asking for the same build
    at once join the one build MongoDB runs. A write whose correctness needs a collection's
    indexes waits for them (`ready`), for a bounded time, then gets a 503.
    """

    def __init__(
        self, db: AsyncDatabase[dict[str, Any]], plan: IndexPlan, *, wait_seconds: float
    ) -> None:
        self.db = db
        self.plan = plan
        self.wait_seconds = wait_seconds
        self._made = {collection: asyncio.Event() for collection in plan}
        # Ended by the attempt running now, or by the next one, with its error (or None).
        self._attempt: asyncio.Future[PyMongoError | None] | None = None
        # A writer is waiting: the next attempt starts now rather than after the back-off.
        self._retry_now = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._attempt = asyncio.get_running_loop().create_future()
            self._task = asyncio.create_task(self._keep())

    @property
    def done(self) -> bool:
        return all(event.is_set() for event in self._made.values())

    async def _keep(self) -> None:
        failures = 0
        while True:
            assert self._attempt is not None
            try:
                names = await make_indexes(self.db, self.plan, lambda name: self._made[name].set())
            except PyMongoError as exc:
                # MongoDB unreachable, or refusing (a unique index over duplicates already
                # stored): keep trying, loudly; the writes that need the index get a 503.
                ended, self._attempt = self._attempt, asyncio.get_running_loop().create_future()
                _end(ended, exc)
                delay = RETRY_SECONDS[min(failures, len(RETRY_SECONDS) - 1)]
                failures += 1
                level = logging.WARNING if isinstance(exc, ConnectionFailure) else logging.ERROR
                log.log(level, "indexes not made yet (%s); trying again in %.1fs", exc, delay)
                self._retry_now.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._retry_now.wait(), delay)
                continue
            _end(self._attempt, None)
            log.info("indexes in place: %d on %s", len(names), self.db.name)
            return

    async def ready(self, collection: str) -> None:
        """Return once `collection`'s indexes exist. Otherwise a 503 once the attempt to make
        them fails (MongoDB down: answered as any request that finds it down) or takes longer
        than a request may wait (a build on a large collection)."""
        made = self._made[collection]
        if made.is_set():
            return
        self.start()
        self._retry_now.set()
        attempt = self._attempt
        assert attempt is not None
        made_waiter = asyncio.ensure_future(made.wait())
        either: set[asyncio.Future[Any]] = {made_waiter, attempt}
        try:
            await asyncio.wait(
                either, timeout=self.wait_seconds,
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            made_waiter.cancel()
        if made.is_set():
            return
        error = attempt.result() if attempt.done() and not attempt.cancelled() else None
        if isinstance(error, ConnectionFailure):
            raise ConnectionFailure(f"while making the indexes: {error}") from None
        raise ServiceUnavailable(INDEXES_PENDING)

    async def close(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._attempt is not None and not self._attempt.done():
            self._attempt.cancel()  # writers still waiting get their 503


def _end(attempt: asyncio.Future[PyMongoError | None], outcome: PyMongoError | None) -> None:
    """Tell the writers waiting on an attempt how it ended (a closing keeper cancelled it)."""
    if not attempt.done():
        attempt.set_result(outcome)
