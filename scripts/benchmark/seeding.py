"""Users with N todos, inserted straight into MongoDB (the API would take minutes for 1,000,000).

The documents are the service's own (server/domain/todos.py `new_todo`), one millisecond apart
so that their numbers and the list order agree; afterwards the user's cached first page is
invalidated exactly as a write does it (new version, page deleted), so no instance and no edge
serves a page from before the seeding.
"""

from __future__ import annotations

import sys
from datetime import timedelta
from typing import Any

from bson import ObjectId
from pymongo import MongoClient
from pymongo.database import Database
from redis import Redis

from scripts.stack.config import StackConfig, StackError
from server.domain.todos import new_todo
from server.infra.cache_keys import VERSION_TTL, first_page_keys, new_version
from server.infra.clock import utc_now
from server.infra.settings import Settings

BATCH = 10_000


def owner_id(db: Database[dict[str, Any]], username: str) -> ObjectId:
    doc = db["users"].find_one({"username": username}, {"_id": True})
    if doc is None:
        raise StackError(f"user {username!r} does not exist (register it through the API first)")
    return ObjectId(doc["_id"])


def seed_up_to(cfg: StackConfig, username: str, count: int) -> int:
    """Give `username` (registered already) at least `count` todos; returns how many it has."""
    client: MongoClient[dict[str, Any]] = MongoClient(cfg.mongo_uri)
    try:
        db = client[cfg.db_name]
        owner = owner_id(db, username)
        have = db["todos"].count_documents({"owner": owner})
        missing = count - have
        if missing > 0:
            print(f"seeding {username}: {missing} todos ...", file=sys.stderr, flush=True)
            insert(db, owner, missing)
            invalidate_first_page(cfg, owner)
        return max(have, count)
    finally:
        client.close()


def insert(db: Database[dict[str, Any]], owner: ObjectId, count: int) -> None:
    start = utc_now() - timedelta(milliseconds=count)
    for first in range(0, count, BATCH):
        docs = []
        for n in range(first, min(first + BATCH, count)):
            doc = new_todo(owner, f"seeded todo {n + 1}")
            doc["created_at"] = start + timedelta(milliseconds=n + 1)
            docs.append(doc)
        db["todos"].insert_many(docs, ordered=False)


def invalidate_first_page(cfg: StackConfig, owner: ObjectId) -> None:
    """What `PageCache.invalidate` does after a write."""
    page_key, version_key, _lock = first_page_keys(Settings().redis_prefix, str(owner))
    redis = Redis.from_url(cfg.redis_url)
    try:
        with redis.pipeline(transaction=True) as pipe:
            pipe.set(version_key, new_version(), ex=VERSION_TTL)
            pipe.delete(page_key)
            pipe.execute()
    finally:
        redis.close()
