"""The synchronous MongoDB and Redis clients of one worker process.

A worker is not an event loop: it uses pymongo's `MongoClient` and redis-py's `Redis`. They
are opened in the process that runs the task, on first use, so a prefork child never uses
connections inherited across the fork.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from pymongo import MongoClient, ReadPreference
from pymongo.client_session import ClientSession
from pymongo.collection import Collection
from pymongo.database import Database
from redis import Redis

from server.domain import jobs
from server.infra import notifications
from server.infra.mongo_options import mongo_options
from server.infra.settings import Settings


class WorkerClients:
    """The synchronous MongoDB and Redis clients of one worker process."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._pid = 0
        self._mongo: MongoClient[dict[str, Any]] | None = None
        self._redis: Redis | None = None
        # Live notifications to the job's owner: best effort, never a reason to fail or retry.
        self.events = notifications.WorkerPublisher(
            settings.redis_url, prefix=settings.redis_prefix, timeout=settings.redis_timeout
        )

    def _open(self) -> None:
        if self._pid == os.getpid():
            return
        # Opened after a fork: the parent's clients (if any) are not ours to use or close.
        self._pid = os.getpid()
        self._mongo = MongoClient(
            self.settings.mongo_uri, **mongo_options(self.settings, appname="todo-worker")
        )
        self._redis = Redis.from_url(
            self.settings.redis_url,
            socket_timeout=self.settings.redis_timeout,
            socket_connect_timeout=self.settings.redis_timeout,
        )

    def close(self) -> None:
        if self._pid == os.getpid() and self._mongo is not None and self._redis is not None:
            self._mongo.close()
            self._redis.close()
        self._pid, self._mongo, self._redis = 0, None, None
        self.events.close()

    @property
    def db(self) -> Database[dict[str, Any]]:
        self._open()
        assert self._mongo is not None
        return self._mongo[self.settings.db_name]

    @property
    def redis(self) -> Redis:
        self._open()
        assert self._redis is not None
        return self._redis

    @contextmanager
    def todos_as_of_now(
        self,
    ) -> Iterator[tuple[Collection[dict[str, Any]], ClientSession]]:
        """The todos collection read from a secondary when there is one, in a session that
        sees every write acknowledged before this call: a long read (an export) takes no
        work from the primary, and misses nothing the user wrote before asking for it.

        A causally consistent session whose operation time is first set by a read on the
        primary; MongoDB then makes a secondary's reads in the session wait until that member
        has applied everything up to that time. On a standalone server, reads go there."""
        with self.db.client.start_session(causal_consistency=True) as session:
            self.db["jobs"].find_one({}, {"_id": True}, session=session)  # on the primary
            todos = self.db["todos"].with_options(
                read_preference=ReadPreference.SECONDARY_PREFERRED
            )
            yield todos, session

    def job_changed(self, doc: dict[str, Any]) -> None:
        """Tell the job's owner its new state (the `notify` of server/worker/records.py's
        changes)."""
        self.events.publish(doc["owner"], notifications.job_changed(jobs.public_job(doc)))
