"""Job records: what a user asked to run off the request path, and how far it got.

The records live in MongoDB (collection `jobs`), not only in Celery's result backend, so they
survive a Redis flush. Web instances create and read them here (`JobStore`, async) and hand each
new job to the workers through server.infra.queue.enqueue; workers move them through their
states with the synchronous transitions of server/worker/records.py.

    queued --(a worker takes it)--> running --> done | failed
                                      |
                                      +--(its worker died: the lease ran out)--> queued
"""

from __future__ import annotations

from typing import Any

from bson import ObjectId
from celery import Celery
from pymongo import DESCENDING, ReturnDocument
from pymongo.asynchronous.database import AsyncDatabase

from server.domain import job_files
from server.domain.errors import Conflict, Gone, NotFound, ServiceUnavailable
from server.domain.index_keeper import IndexKeeper
from server.infra import queue
from server.infra.clock import isoformat, utc_now
from server.infra.notifications import Publisher

QUEUED, RUNNING, DONE, FAILED = "queued", "running", "done", "failed"
RECENT_JOBS = 20
# Job type -> the Celery task that runs it.
TASKS = {"purge": "todo.purge", "export": "todo.export", "import": "todo.import"}
QUEUE_UNAVAILABLE = "job queue unavailable, try again shortly"
NOT_AN_EXPORT = "this job is not an export or an import: it has no file to download"
NOT_DONE = "the job is not done yet; follow it until its status is done"
NO_REPORT = "this import rejected no row: it has no error report to download"
# A finished job's file (an export, an import's report) is kept this long, then deleted by
# the sweeper; the record stays.
FILE_KEEP_DAYS = 7
EXPIRED = (
    f"the job's file was deleted {FILE_KEEP_DAYS} days after it was made; "
    "start a new job to get another"
)
# Private: the GridFS file (bucket `exports`) the current attempt writes to: an export's file
# (see server/worker/tasks.py: export), an import's report of rejected rows (see
# server/worker/tasks.py: import_todos).
EXPORT_FILE = "export_file"
# Private: an import's uploaded file (bucket `imports`), deleted once the job has finished.
IMPORT_FILE = "import_file"


def new_job(owner: ObjectId, kind: str, params: dict[str, Any]) -> dict[str, Any]:
    now = utc_now()
    return {
        "_id": ObjectId(),
        "owner": owner,
        "type": kind,
        "status": QUEUED,
        "queued_at": now,
        "progress": {"done": 0, "total": None},
        "params": params,
        "result": None,
        "error": None,
        "created_at": now,
        "updated_at": now,
    }


def public_job(doc: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": str(doc["_id"]),
        "type": doc["type"],
        "status": doc["status"],
        "progress": doc["progress"],
        "params": doc["params"],
        "result": doc["result"],
        "error": doc["error"],
        "created_at": isoformat(doc["created_at"]),
        "updated_at": isoformat(doc["updated_at"]),
        "result_url": result_url(doc),
    }


def has_file(doc: dict[str, Any]) -> bool:
    """Whether a finished job made a file: every export, an import that rejected rows."""
    return doc["type"] == "export" or (doc["type"] == "import" and bool(doc["result"]["rejected"]))


def result_url(doc: dict[str, Any]) -> str | None:
    """Where a finished job's file is downloaded until it expires; None for other jobs."""
    if doc["status"] == DONE and has_file(doc) and not doc["result"].get("expired"):
        return f"/jobs/{doc['_id']}/result"
    return None


class JobStore:
    def __init__(
        self, db: AsyncDatabase[dict[str, Any]], celery: Celery, events: Publisher,
        indexes: IndexKeeper,
    ) -> None:
        self.collection = db["jobs"]
        self.celery = celery
        self.events = events
        self.indexes = indexes

    async def start(
        self, *, owner: ObjectId, kind: str, params: dict[str, Any],
        private: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Record a queued job, then hand it to the workers; a 503 if the queue is down.
        `private` fields are kept on the record for the worker, never shown."""
        if kind == "import":
            # Its rows are made exactly once by the unique (owner, key) index on todos.
            await self.indexes.ready("todos")
        # The record first: a worker that takes the job at once must find it.
        doc = {**new_job(owner, kind, params), **(private or {})}
        await self.collection.insert_one(doc)
        # Before it is handed over: a worker's "running" must not overtake "queued".
        await self.events.job(owner, public_job(doc))
        try:
            await queue.enqueue(self.celery, TASKS[kind], str(doc["_id"]))
        except queue.PUBLISH_FAILURES:
            # Only while still queued: a worker claims a queued job only (so a message that
            # got through after all never runs it), and one it claimed went through.
            failed = await self.collection.find_one_and_update(
                {"_id": doc["_id"], "status": QUEUED},
                {"$set": {"status": FAILED, "error": QUEUE_UNAVAILABLE,
                          "updated_at": utc_now()}},
                return_document=ReturnDocument.AFTER,
            )
            if failed is None:
                return public_job(await self._find(owner, doc["_id"]))
            await self.events.job(owner, public_job(failed))
            raise ServiceUnavailable(QUEUE_UNAVAILABLE) from None
        return public_job(doc)

    async def _find(self, owner: ObjectId, job_id: ObjectId) -> dict[str, Any]:
        doc = await self.collection.find_one({"_id": job_id, "owner": owner})
        if doc is None:
            raise NotFound("job not found")
        return doc

    async def get(self, *, owner: ObjectId, job_id: ObjectId) -> dict[str, Any]:
        return public_job(await self._find(owner, job_id))

    async def export_file(self, *, owner: ObjectId, job_id: ObjectId) -> job_files.ExportFile:
        """The file of one of the owner's finished exports, opened for reading in chunks."""
        doc = await self._find(owner, job_id)
        if doc["type"] not in ("export", "import"):
            raise Conflict(NOT_AN_EXPORT)
        if doc["status"] != DONE:
            raise Conflict(NOT_DONE)
        if not has_file(doc):
            raise Conflict(NO_REPORT)
        if doc["result"].get("expired"):
            raise Gone(EXPIRED)
        if doc["type"] == "import":
            return await job_files.open_report(
                self.collection.database, file_id=doc[EXPORT_FILE], job_id=job_id
            )
        return await job_files.open_export(
            self.collection.database, file_id=ObjectId(doc["result"]["file_id"]), job_id=job_id,
            fmt=doc["result"]["format"],
        )

    async def recent(self, *, owner: ObjectId, limit: int = RECENT_JOBS) -> list[dict[str, Any]]:
        """The owner's latest jobs, newest first."""
        found = self.collection.find({"owner": owner}).sort(
            [("created_at", DESCENDING), ("_id", DESCENDING)]
        )
        return [public_job(doc) for doc in await found.limit(limit).to_list()]
