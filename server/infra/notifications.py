"""Live notifications: the message shapes, the per-user channel, and the publishers.

Every change a user should hear about is published, as JSON, on the Redis pub/sub channel
`<redis_prefix>events:<user id>`; each instance relays its users' channels to their open
WebSockets (server/web/hub.py, handlers/ws.py). Publishing is best effort: the write in MongoDB is
the truth, a message that cannot be published is counted and dropped, never a failed request.
A client that may have missed messages is told to refetch (`resync`).

    {"type": "todo", "action": "created|updated|finished", "todo": {<public todo>}, "at": ...}
    {"type": "todo", "action": "deleted", "todo": {"id": ...}, "at": ...}
    {"type": "todos", "action": "imported|purged", "count": n, "at": ...}   many at once
    {"type": "job", "job": {<public job>}, "at": ...}                 every state or progress
    {"type": "hello", "user": <user id>, "at": ...}       first message: the socket is live
    {"type": "resync", "at": ...}          messages may have been lost: refetch what you show
    {"type": "pong", "at": ...}                          the answer to {"type": "ping"}

`at` is the publishing server's clock (UTC, milliseconds). Messages of one publisher arrive in
the order they were published; there is no order across publishers (an instance and a
worker), so a client orders a todo's or a job's states by their own `updated_at`/`finished_at`
if it must, and refetches on `resync`.
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Any

import redis
from bson import ObjectId
from redis.asyncio import Redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from server.infra.caller import Caller
from server.infra.clock import isoformat, utc_now
from server.infra.redis_guard import REDIS_FAILURES, RedisGuard, done

log = logging.getLogger("todo.notifications")

CREATED, UPDATED, FINISHED, DELETED = "created", "updated", "finished", "deleted"
IMPORTED, PURGED = "imported", "purged"
# How long a worker stops publishing after Redis failed it: an outage costs a job one timeout
# now and then, not one per progress step.
WORKER_COOLDOWN = 1.0


def channel(prefix: str, user_id: ObjectId | str) -> str:
    """The pub/sub channel of one user's events."""
    return f"{prefix}events:{user_id}"


def message(kind: str, **fields: Any) -> dict[str, Any]:
    return {"type": kind, **fields, "at": isoformat(utc_now())}


def encode(event: dict[str, Any]) -> str:
    """The one JSON form of a message (the hub recognises a revocation by its prefix)."""
    return json.dumps(event)


def todo_changed(action: str, todo: dict[str, Any]) -> dict[str, Any]:
    return message("todo", action=action, todo=todo)


def todo_deleted(todo_id: ObjectId | str) -> dict[str, Any]:
    return message("todo", action=DELETED, todo={"id": str(todo_id)})


def todos_changed(action: str, count: int) -> dict[str, Any]:
    """Many todos changed at once (an import, a purge): refetch rather than one message each."""
    return message("todos", action=action, count=count)


def job_changed(job: dict[str, Any]) -> dict[str, Any]:
    """`job` is the public form of the job record (server.domain.jobs.public_job)."""
    return message("job", job=job)


def hello(user_id: ObjectId) -> dict[str, Any]:
    return message("hello", user=str(user_id))


def resync() -> dict[str, Any]:
    return message("resync")


def pong() -> dict[str, Any]:
    return message("pong")


def revoked(token_id: str) -> dict[str, Any]:
    """Internal, never sent to a client: the sockets opened with this token are closed."""
    return message("revoked", token_id=token_id)


REVOKED_PREFIX = encode({"type": "revoked"})[:-1].encode()


class Publisher:
    """An instance's side: publishes through the RedisGuard, so a Redis outage costs a write
    nothing (while the guard cools down it does not even try) and is counted, not raised."""

    def __init__(self, guard: RedisGuard) -> None:
        self.guard = guard
        self.failures = 0

    async def publish(self, owner: ObjectId, event: dict[str, Any]) -> bool:
        name, data = channel(self.guard.prefix, owner), encode(event)

        def send(client: Redis) -> Any:
            return done(client.publish(name, data))

        if await self.guard.run(send, default=False):
            return True
        self.failures += 1
        return False

    async def todo(self, owner: ObjectId, action: str, todo: dict[str, Any]) -> None:
        await self.publish(owner, todo_changed(action, todo))

    async def todo_deleted(self, owner: ObjectId, todo_id: ObjectId) -> None:
        await self.publish(owner, todo_deleted(todo_id))

    async def job(self, owner: ObjectId, job: dict[str, Any]) -> None:
        await self.publish(owner, job_changed(job))

    async def revoked(self, principal: Caller) -> None:
        await self.publish(principal.user_id, revoked(principal.token_id))


class WorkerPublisher:
    """A worker's side, synchronous. Never raises: a job does not fail, nor retry, because a
    notification could not be sent. Its connection is its own, without redis-py's retries (a
    lost message is not worth seconds of a job), opened on first use in the process that
    publishes (after prefork's fork)."""

    def __init__(self, url: str, *, prefix: str, timeout: float) -> None:
        self.url, self.prefix, self.timeout = url, prefix, timeout
        self.failures = 0
        self._down_until = 0.0
        self._pid = 0
        self._redis: redis.Redis | None = None

    def _client(self) -> redis.Redis:
        if self._redis is None or self._pid != os.getpid():
            self._pid = os.getpid()
            self._redis = redis.Redis.from_url(
                self.url, socket_timeout=self.timeout, socket_connect_timeout=self.timeout,
                retry=Retry(NoBackoff(), 0),
            )
        return self._redis

    def close(self) -> None:
        if self._redis is not None and self._pid == os.getpid():
            self._redis.close()
        self._redis = None

    def publish(self, owner: ObjectId | str, event: dict[str, Any]) -> bool:
        if time.monotonic() < self._down_until:
            self.failures += 1
            return False
        try:
            self._client().publish(channel(self.prefix, owner), encode(event))
        except REDIS_FAILURES as exc:
            self.failures += 1
            self._down_until = time.monotonic() + WORKER_COOLDOWN
            log.warning("could not publish a notification: %s", exc)
            return False
        return True

    def todos_changed(self, owner: ObjectId | str, action: str, count: int) -> bool:
        """One message for a bulk change (`imported`, `purged`) of `count` todos."""
        return self.publish(owner, todos_changed(action, count))
