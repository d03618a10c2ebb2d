"""Job records: what a user asked to run off the request path, and how far it got.

The records live in MongoDB (collection `jobs`), not only in Celery's result backend, so they
survive a Redis flush. Web instances create and read them (`JobStore`, async); workers move
them through their states with the synchronous functions below.

    queued --(a worker takes it)--> running --> done | failed
"""

from __future__ import annotations

from typing import Any

from bson import ObjectId
from celery import Celery
from pymongo import DESCENDING, ReturnDocument
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.collection import Collection

from server import celery_app, exports
from server.errors import Conflict, NotFound, ServiceUnavailable
from server.todos import isoformat, utc_now

QUEUED, RUNNING, DONE, FAILED = "queued", "running", "done", "failed"
RECENT_JOBS = 20
# Job type -> the Celery task that runs it.
TASKS = {"purge": "todo.purge", "export": "todo.export", "import": "todo.import"}
QUEUE_UNAVAILABLE = "job queue unavailable, try again shortly"
NOT_AN_EXPORT = "this job is not an export or an import: it has no file to download"
NOT_DONE = "the job is not done yet; follow it until its status is done"
NO_REPORT = "this import rejected no row: it has no error report to download"
# Private: the GridFS file (bucket `exports`) the current attempt writes to: an export's file
# (see tasks.export), an import's report of rejected rows (see tasks.import_todos).
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


def result_url(doc: dict[str, Any]) -> str | None:
    """Where a finished export, or a finished import's report of rejected rows, is downloaded;
    None for every other job."""
    if doc["status"] == DONE and (
        doc["type"] == "export" or (doc["type"] == "import" and doc["result"]["rejected"])
    ):
        return f"/jobs/{doc['_id']}/result"
    return None


class JobStore:
    def __init__(self, db: AsyncDatabase[dict[str, Any]], celery: Celery) -> None:
        self.collection = db["jobs"]
        self.celery = celery

    async def start(
        self, *, owner: ObjectId, kind: str, params: dict[str, Any],
        private: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Record a queued job, then hand it to the workers; a 503 if the queue is down.
        `private` fields are kept on the record for the worker, never shown."""
        # The record first: a worker that takes the job at once must find it.
        doc = {**new_job(owner, kind, params), **(private or {})}
        await self.collection.insert_one(doc)
        try:
            await celery_app.enqueue(self.celery, TASKS[kind], str(doc["_id"]))
        except celery_app.PUBLISH_FAILURES:
            await self.collection.update_one(
                {"_id": doc["_id"]},
                {"$set": {"status": FAILED, "error": QUEUE_UNAVAILABLE,
                          "updated_at": utc_now()}},
            )
            raise ServiceUnavailable(QUEUE_UNAVAILABLE) from None
        return public_job(doc)

    async def _find(self, owner: ObjectId, job_id: ObjectId) -> dict[str, Any]:
        doc = await self.collection.find_one({"_id": job_id, "owner": owner})
        if doc is None:
            raise NotFound("job not found")
        return doc

    async def get(self, *, owner: ObjectId, job_id: ObjectId) -> dict[str, Any]:
        return public_job(await self._find(owner, job_id))

    async def export_file(self, *, owner: ObjectId, job_id: ObjectId) -> exports.ExportFile:
        """The file of one of the owner's finished exports, opened for reading in chunks."""
        doc = await self._find(owner, job_id)
        if doc["type"] not in ("export", "import"):
            raise Conflict(NOT_AN_EXPORT)
        if doc["status"] != DONE:
            raise Conflict(NOT_DONE)
        if doc["type"] == "import":
            if not doc["result"]["rejected"]:
                raise Conflict(NO_REPORT)
            return await exports.open_report(
                self.collection.database, file_id=doc[EXPORT_FILE], job_id=job_id
            )
        return await exports.open_export(
            self.collection.database, file_id=ObjectId(doc["result"]["file_id"]), job_id=job_id,
            fmt=doc["result"]["format"],
        )

    async def recent(self, *, owner: ObjectId, limit: int = RECENT_JOBS) -> list[dict[str, Any]]:
        """The owner's latest jobs, newest first."""
        found = self.collection.find({"owner": owner}).sort(
            [("created_at", DESCENDING), ("_id", DESCENDING)]
        )
        return [public_job(doc) for doc in await found.limit(limit).to_list()]


# -- the worker's side: synchronous, on a pymongo Collection ------------------------------
def mark_running(jobs: Collection[dict[str, Any]], job_id: ObjectId) -> dict[str, Any] | None:
    """Take a queued job (or one already running: a redelivery after a worker died). None when
    there is nothing to do: the job is unknown, or already done or failed."""
    return jobs.find_one_and_update(
        {"_id": job_id, "status": {"$in": [QUEUED, RUNNING]}},
        {"$set": {"status": RUNNING, "updated_at": utc_now()}},
        return_document=ReturnDocument.AFTER,
    )


def set_progress(jobs: Collection[dict[str, Any]], job_id: ObjectId, *, done: int,
                 total: int | None) -> None:
    jobs.update_one(
        {"_id": job_id},
        {"$set": {"progress": {"done": done, "total": total}, "updated_at": utc_now()}},
    )


def set_export_file(jobs: Collection[dict[str, Any]], job_id: ObjectId,
                    file_id: ObjectId) -> None:
    jobs.update_one({"_id": job_id}, {"$set": {EXPORT_FILE: file_id, "updated_at": utc_now()}})


def mark_done(jobs: Collection[dict[str, Any]], job_id: ObjectId, *,
              result: dict[str, Any]) -> None:
    jobs.update_one(
        {"_id": job_id},
        {"$set": {"status": DONE, "result": result, "error": None, "updated_at": utc_now()}},
    )


def mark_failed(jobs: Collection[dict[str, Any]], job_id: ObjectId, *, error: str) -> None:
    jobs.update_one(
        {"_id": job_id, "status": {"$ne": DONE}},
        {"$set": {"status": FAILED, "error": error, "updated_at": utc_now()}},
    )

