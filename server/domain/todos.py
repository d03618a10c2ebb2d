"""Todo data access: every query is scoped to its owner, and every write invalidates the cache.

Idempotent create: a todo made with an `Idempotency-Key` stores the key and a hash of the
request. A unique partial index on (owner, idempotency_key) lets exactly one of any number of
racing requests insert, on whichever instances they run; the others read the todo it made.

Reads on a replica set: the cached first page is loaded from the primary only, since a page
from a lagging secondary, once cached, would hide a user's own write until the next one. Other
reads prefer the primary and fall back to a secondary while there is none (an election takes a
few seconds): the list keeps answering, at worst a moment behind (docs/operations.md).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from bson import ObjectId
from pymongo import DESCENDING, ReadPreference, ReturnDocument
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import AutoReconnect, DuplicateKeyError

from server.domain.errors import Conflict, NotFound, UnprocessableContent
from server.domain.index_keeper import IndexKeeper
from server.domain.paging import encode_cursor
from server.domain.validation import ListQuery, TodoUpdate
from server.infra.cache import PageCache
from server.infra.clock import isoformat, utc_now
from server.infra.notifications import CREATED, FINISHED, UPDATED, Publisher

LIST_ORDER = [("created_at", DESCENDING), ("_id", DESCENDING)]
IDEMPOTENCY_KEY = "idempotency_key"
IDEMPOTENCY_HASH = "idempotency_hash"
# Private fields stay in MongoDB: reads do not even fetch them.
PUBLIC_FIELDS = {"owner": False, IDEMPOTENCY_KEY: False, IDEMPOTENCY_HASH: False}
# Each extra attempt needs the todo holding the key to be deleted between our insert and read.
CREATE_ATTEMPTS = 3


def public_todo(doc: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": str(doc["_id"]),
        "content": doc["content"],
        "created_at": isoformat(doc["created_at"]),
        "is_finished": doc["is_finished"],
        "finished_at": isoformat(doc.get("finished_at")),
    }


def request_hash(content: str) -> str:
    """What makes a repeated create "the same request": its validated content.

    Kept apart from `content`, which a PATCH may change, so that a late retry of the original
    request is still recognised. A hash, so a 1000-character content is not stored twice.
    """
    return hashlib.sha256(content.encode("utf-8")).hexdigest()


def new_todo(owner: ObjectId, content: str, idempotency_key: str | None = None) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "_id": ObjectId(),
        "owner": owner,
        "content": content,
        "created_at": utc_now(),
        "is_finished": False,
        "finished_at": None,
    }
    # Only keyed todos get these fields: the unique index is partial on the key existing, so
    # any number of keyless todos never collide (a stored None would).
    if idempotency_key is not None:
        doc[IDEMPOTENCY_KEY] = idempotency_key
        doc[IDEMPOTENCY_HASH] = request_hash(content)
    return doc


@dataclass(frozen=True)
class Created:
    todo: dict[str, Any]
    replayed: bool  # an earlier request with the same Idempotency-Key created it


@dataclass(frozen=True)
class Page:
    """One page of a list, kept serialized: a cached page goes to the client as stored."""

    todos_json: bytes  # the JSON array of public todos
    next_cursor: str | None

    def to_bytes(self) -> bytes:
        # `<cursor>\n<json array>`: a cursor is base64url, so it never holds a newline.
        return (self.next_cursor or "").encode("ascii") + b"\n" + self.todos_json

    @classmethod
    def from_bytes(cls, raw: bytes) -> Page:
        cursor, _, todos_json = raw.partition(b"\n")
        return cls(todos_json=todos_json, next_cursor=cursor.decode("ascii") or None)


def _key_pattern(exc: DuplicateKeyError) -> dict[str, Any]:
    """The fields of the unique index that refused the insert."""
    pattern: dict[str, Any] = (exc.details or {}).get("keyPattern") or {}
    return pattern


def _finished_at_when(finished: bool, now: datetime) -> Any:
    # Finishing twice keeps the first finished_at; un-finishing clears it.
    return {"$ifNull": ["$finished_at", now]} if finished else None


class TodoStore:
    """Each write is published to the owner's live notifications once it is done (best
    effort: see server/infra/notifications.py); a replayed create changed nothing and says
    nothing."""

    def __init__(
        self, db: AsyncDatabase[dict[str, Any]], cache: PageCache, events: Publisher,
        indexes: IndexKeeper,
    ) -> None:
        self.collection = db["todos"]
        self.answerable = self.collection.with_options(
            read_preference=ReadPreference.PRIMARY_PREFERRED
        )
        self.cache = cache
        self.events = events
        self.indexes = indexes

    async def create(
        self, *, owner: ObjectId, content: str, idempotency_key: str | None = None
    ) -> Created:
        """A new todo; with a key already used by `owner`, the todo that key created."""
        if idempotency_key is not None:
            # The unique (owner, key) index is what makes a retried request create one todo.
            await self.indexes.ready("todos")
        doc = new_todo(owner, content, idempotency_key)
        for _attempt in range(CREATE_ATTEMPTS):
            try:
                await self.collection.insert_one(doc)
            except DuplicateKeyError as exc:
                if idempotency_key is None or IDEMPOTENCY_KEY not in _key_pattern(exc):
                    raise
                earlier = await self._replay(owner, idempotency_key, doc[IDEMPOTENCY_HASH])
                if earlier is not None:
                    return earlier
                continue  # deleted since our insert failed: the key is free again
            await self.cache.invalidate(str(owner))
            todo = public_todo(doc)
            await self.events.todo(owner, CREATED, todo)
            return Created(todo, replayed=False)
        raise Conflict("the todo of this Idempotency-Key is being deleted; retry the request")

    async def _replay(self, owner: ObjectId, key: str, hashed: str) -> Created | None:
        doc = await self.collection.find_one({"owner": owner, IDEMPOTENCY_KEY: key})
        if doc is None:
            return None
        if doc[IDEMPOTENCY_HASH] != hashed:
            raise UnprocessableContent(
                "this Idempotency-Key was already used for a different request"
                " (another content); use a new key for a new todo"
            )
        # Invalidate again: the first attempt may have died between its insert and its
        # invalidation, the very failure a retry recovers from. Otherwise it is harmless.
        await self.cache.invalidate(str(owner))
        return Created(public_todo(doc), replayed=True)

    async def create_many(
        self, *, owner: ObjectId, contents: list[str], newest: datetime | None = None
    ) -> int:
        """Insert a batch in one round trip, one millisecond apart, the last at `newest`."""
        newest = newest or utc_now()
        count = len(contents)
        docs = [
            {
                "owner": owner,
                "content": content,
                "created_at": newest - timedelta(milliseconds=count - 1 - i),
                "is_finished": False,
                "finished_at": None,
            }
            for i, content in enumerate(contents)
        ]
        await self.collection.insert_many(docs, ordered=False)
        await self.cache.invalidate(str(owner))
        return count

    async def get(self, *, owner: ObjectId, todo_id: ObjectId) -> dict[str, Any]:
        doc = await self.answerable.find_one({"_id": todo_id, "owner": owner}, PUBLIC_FIELDS)
        if doc is None:
            raise NotFound("todo not found")
        return public_todo(doc)

    async def update(
        self, *, owner: ObjectId, todo_id: ObjectId, changes: TodoUpdate
    ) -> dict[str, Any]:
        fields: dict[str, Any] = {}
        if changes.content is not None:
            # $literal: in an update pipeline a string starting with "$" would be a field path.
            fields["content"] = {"$literal": changes.content}
        if changes.is_finished is not None:
            fields["is_finished"] = changes.is_finished
            fields["finished_at"] = _finished_at_when(changes.is_finished, utc_now())
        action = FINISHED if changes.is_finished else UPDATED
        return await self._update(owner, todo_id, fields, action)

    async def finish(self, *, owner: ObjectId, todo_id: ObjectId) -> dict[str, Any]:
        fields = {"is_finished": True, "finished_at": _finished_at_when(True, utc_now())}
        return await self._update(owner, todo_id, fields, FINISHED)

    async def _update(
        self, owner: ObjectId, todo_id: ObjectId, fields: dict[str, Any], action: str
    ) -> dict[str, Any]:
        doc = await self.collection.find_one_and_update(
            {"_id": todo_id, "owner": owner},
            [{"$set": fields}],
            projection=PUBLIC_FIELDS,
            return_document=ReturnDocument.AFTER,
        )
        if doc is None:
            raise NotFound("todo not found")
        await self.cache.invalidate(str(owner))
        todo = public_todo(doc)
        await self.events.todo(owner, action, todo)
        return todo

    async def delete(self, *, owner: ObjectId, todo_id: ObjectId) -> None:
        result = await self.collection.delete_one({"_id": todo_id, "owner": owner})
        if result.deleted_count == 0:
            raise NotFound("todo not found")
        await self.cache.invalidate(str(owner))
        await self.events.todo_deleted(owner, todo_id)

    def first_page_keys(self, owner: ObjectId) -> Sequence[str]:
        """The Redis keys a cached first-page read starts with (see list_page's `read`)."""
        return self.cache.read_keys(str(owner))

    async def list_page(
        self, *, owner: ObjectId, query: ListQuery, read: Sequence[Any] | None = None,
        asked_at: float | None = None,
    ) -> Page:
        """A page newest first; the first page of the default query comes from the cache.

        `read`: the values of first_page_keys(owner), when already read from Redis.
        `asked_at`: when the request arrived (time.monotonic()), see PageCache.get_or_load.
        """
        if query.is_default:
            try:
                raw = await self.cache.get_or_load(
                    str(owner), lambda: self._load_page(owner, query, self.collection), read,
                    asked_at,
                )
            except AutoReconnect:  # no primary (an election): answered, but never cached
                raw = await self._load_page(owner, query, self.answerable)
            return Page.from_bytes(raw)
        return Page.from_bytes(await self._load_page(owner, query, self.answerable))

    async def _load_page(self, owner: ObjectId, query: ListQuery,
                         collection: AsyncCollection[dict[str, Any]]) -> bytes:
        conditions: dict[str, Any] = {"owner": owner}
        if query.finished is not None:
            conditions["is_finished"] = query.finished
        if query.cursor is not None:
            conditions.update(query.cursor.filter())
        found = collection.find(conditions, PUBLIC_FIELDS).sort(LIST_ORDER)
        docs = await found.skip(query.start).limit(query.limit + 1).to_list()
        next_cursor = None
        if len(docs) > query.limit:
            docs = docs[: query.limit]
            next_cursor = encode_cursor(docs[-1]["created_at"], docs[-1]["_id"])
        todos_json = json.dumps([public_todo(doc) for doc in docs]).encode()
        return Page(todos_json=todos_json, next_cursor=next_cursor).to_bytes()
