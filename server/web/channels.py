"""What the notification hub (server/web/hub.py) works with: the sockets it serves
(`Subscriber`, implemented by handlers/ws.py), the state of each user's channel (`Channel`),
and its own Redis pub/sub connection, opened and closed here.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from typing import Protocol

from bson import ObjectId
from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from server.infra.redis_connections import reset_safe_client
from server.infra.redis_guard import REDIS_FAILURES
from server.infra.settings import Settings


class Subscriber(Protocol):
    """What the hub needs of a socket (handlers/ws.py)."""

    needs_resync: bool

    @property
    def user_id(self) -> ObjectId: ...
    @property
    def token_id(self) -> str: ...

    @property
    def queued(self) -> int: ...

    def deliver(self, data: str) -> None: ...
    def shut(self, code: int, reason: str) -> None: ...


@dataclass(eq=False)
class Channel:
    """One user's channel on this instance: its sockets, and where its subscription stands."""

    sockets: set[Subscriber] = field(default_factory=set)
    subscribed: bool = False  # a SUBSCRIBE was sent on the current connection, no UNSUBSCRIBE
    sent: int = 0  # SUBSCRIBEs sent on the current connection
    acked: int = 0  # ... and confirmed by Redis (replies come in order)
    waiters: list[tuple[int, asyncio.Future[None]]] = field(default_factory=list)


def pubsub_client(settings: Settings) -> Redis:
    """A connection of its own (never one of the request pool's): it blocks reading."""
    return reset_safe_client(Redis.from_url(
        settings.redis_url,
        socket_connect_timeout=settings.redis_timeout,
        socket_timeout=settings.redis_timeout,
        retry=Retry(NoBackoff(), 0),  # the hub reconnects itself, and knows when it did
    ))


def channel_text(value: bytes | str) -> str:
    """A channel name as Redis reports it (bytes), as the hub keys it (str)."""
    return value.decode() if isinstance(value, bytes) else value


async def close_quietly(pubsub: PubSub, client: Redis) -> None:
    """Close a dropped connection; it may be broken already."""
    with contextlib.suppress(*REDIS_FAILURES):
        await pubsub.aclose()  # type: ignore[no-untyped-call]
    with contextlib.suppress(*REDIS_FAILURES):
        await client.aclose()
