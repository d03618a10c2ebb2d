"""The clients and stores one instance uses, created on the running loop and closed at shutdown."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from celery import Celery
from pymongo import AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import PyMongoError
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from server.domain.index_keeper import IndexKeeper
from server.domain.indexes import INDEXES
from server.domain.jobs import JobStore
from server.domain.login_throttle import LoginThrottle
from server.domain.todos import TodoStore
from server.domain.tokens import TokenService
from server.domain.users import UserStore
from server.infra import queue
from server.infra.cache import PageCache
from server.infra.mongo_options import mongo_options
from server.infra.notifications import Publisher
from server.infra.redis_connections import reset_safe
from server.infra.redis_guard import RedisGuard
from server.infra.redis_pipeline import PipelinedReads
from server.infra.settings import Settings
from server.web.hub import Hub


def mongo_client(settings: Settings, **options: Any) -> AsyncMongoClient[dict[str, Any]]:
    """A client that gives up quickly on an unreachable server: a 503, never a hang."""
    return AsyncMongoClient(
        settings.mongo_uri,
        **mongo_options(settings, appname="todo-api"),
        # Sized with max_in_flight (docs/design.md): requests beyond the pool wait for a
        # connection, and the instance sheds load before that queue grows long.
        maxPoolSize=settings.mongo_pool_size,
        **options,
    )


# A Redis round trip takes well under a millisecond, so 32 connections carry far more than an
# instance's requests a second; past them a request waits in the loop for one (not counted
# against redis_timeout). Every request's read goes over the pipelined connection
# (server/infra/redis_pipeline.py); the pool carries writes, locks and the cache's loads. Each
# idle connection is kept for good: 512 made each instance 5 MB larger than 128 did, and no
# faster at -c 1000.
REDIS_POOL_SIZE = 32


def redis_client(settings: Settings) -> Redis:
    """A client whose pool makes a request wait for a free connection instead of failing with
    "Too many connections" under a burst: a busy instance is not a Redis outage. The wait is
    bounded by the commands ahead of it, each bounded by redis_timeout."""
    pool = BlockingConnectionPool.from_url(
        settings.redis_url,
        max_connections=REDIS_POOL_SIZE,
        timeout=None,
        socket_timeout=settings.redis_timeout,
        socket_connect_timeout=settings.redis_timeout,
        # No retries inside redis-py: the guard falls back to MongoDB at once instead.
        retry=Retry(NoBackoff(), 0),
    )
    return Redis.from_pool(reset_safe(pool))  # the client owns the pool and closes it


def pipelined_reads(settings: Settings) -> PipelinedReads | None:
    """The hot path's Redis reads, pipelined on one connection (TLS stays with redis-py)."""
    if not PipelinedReads.supports(settings.redis_url):
        return None
    return PipelinedReads(settings.redis_url, timeout=settings.redis_timeout)


@dataclass
class Services:
    settings: Settings
    mongo: AsyncMongoClient[dict[str, Any]]
    redis: RedisGuard
    cache: PageCache
    todos: TodoStore
    users: UserStore
    tokens: TokenService
    logins: LoginThrottle  # the brute-force defence of POST /tokens and POST /session
    celery: Celery
    jobs: JobStore
    events: Publisher  # publishes users' live notifications
    hub: Hub  # relays them to this instance's WebSockets
    indexes: IndexKeeper  # makes the indexes from the start; writes that need one wait

    @property
    def db(self) -> AsyncDatabase[dict[str, Any]]:
        return self.mongo[self.settings.db_name]

    async def mongo_ready(self) -> bool:
        try:
            await self.db.command("ping")
        except PyMongoError:
            return False
        return True

    async def redis_ready(self) -> bool:
        return await self.redis.ping()

    async def close(self) -> None:
        await self.indexes.close()
        await self.hub.close()
        await asyncio.gather(
            self.redis.close(), self.mongo.close(), queue.close(self.celery)
        )


def open_services(
    settings: Settings,
    *,
    mongo: AsyncMongoClient[dict[str, Any]] | None = None,
    redis: Redis | None = None,
) -> Services:
    """Wire the stores to the clients; tests may pass clients of their own (real ones)."""
    mongo = mongo or mongo_client(settings)
    guard = RedisGuard(redis or redis_client(settings), prefix=settings.redis_prefix,
                       reads=pipelined_reads(settings))
    db = mongo[settings.db_name]
    # The lock outlives the slowest MongoDB load, so waiters never give up on a live loader.
    lock_ttl = settings.mongo_op_timeout_ms / 1000 + 1
    cache = PageCache(guard, ttl=settings.cache_ttl, lock_ttl=lock_ttl)
    # Publishes jobs only; it connects to the broker on the first one.
    celery = queue.make_celery(settings)
    events = Publisher(guard)
    # Started here, on the running loop: an instance needs no out-of-band index step. A write
    # waits for them as long as one MongoDB call may take (finding the server, then the call).
    index_wait = (settings.mongo_timeout_ms + settings.mongo_op_timeout_ms) / 1000
    indexes = IndexKeeper(db, INDEXES, wait_seconds=index_wait)
    indexes.start()
    return Services(
        settings=settings,
        mongo=mongo,
        redis=guard,
        cache=cache,
        todos=TodoStore(db, cache, events, indexes),
        users=UserStore(db, indexes),
        tokens=TokenService(secret=settings.secret, ttl=settings.token_ttl, guard=guard, db=db),
        logins=LoginThrottle(guard),
        celery=celery,
        jobs=JobStore(db, celery, events, indexes),
        events=events,
        # Its own Redis connection, opened when the first WebSocket arrives.
        hub=Hub(settings),
        indexes=indexes,
    )
