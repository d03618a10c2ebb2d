"""Job records: what a user asked to run off the request path, and how far it got.

The records live in MongoDB (collection `jobs`), not only in Celery's result backend, so they
survive a Redis flush. Web instances create and read them (`JobStore`, async); workers move
them through their states with the synchronous functions below.

    queued --(a worker takes it)--> running --> done | failed
                                      |
                                      +--(its worker died: the lease ran out)--> queued

A running job holds a lease that its worker renews every few seconds. A worker killed with
`kill -9`, by the OOM killer or by a hard time limit stops renewing it; the sweeper (server/
sweeper.py, in every worker) then queues the job again, at once rather than after the broker's
visibility timeout, which must outlast the longest job and is an hour. Every task is safe to
run again from the start, so a second attempt finishes what the first left half-done.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

from bson import ObjectId
from celery import Celery
from pymongo import DESCENDING, ReturnDocument
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.collection import Collection

from server import exports
from server.domain.errors import Conflict, Gone, NotFound, ServiceUnavailable
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
# (see tasks.export), an import's report of rejected rows (see tasks.import_todos).
EXPORT_FILE = "export_file"
# Private: an import's uploaded file (bucket `imports`), deleted once the job has finished.
IMPORT_FILE = "import_file"
# Told the job record as it is after each change of state or progress (the worker publishes it
# to the owner's live notifications: tasks.WorkerClients.job_changed).
JobListener = Callable[[dict[str, Any]], None]

# A running job's worker renews its lease every LEASE_RENEW_SECONDS; a lease not renewed for
# LEASE_SECONDS means the worker is gone. Short, so a killed worker's job resumes soon; long
# enough that a busy MongoDB or a pause of the worker does not look like a death.
LEASE_SECONDS = 30
LEASE_RENEW_SECONDS = 5
# A job interrupted this many times is failed instead of queued again: it is what kills its
# worker (memory, a hard time limit).
MAX_INTERRUPTIONS = 3
INTERRUPTED = (
    f"the job was interrupted {MAX_INTERRUPTIONS} times (its worker stopped, or it ran past "
    "its hard time limit); it was given up"
)
# A job queued this long ago and still not taken may have lost its message (a broker that
# lost its data): it is published again. A duplicate message is harmless: the second finds
# the job taken or finished and does nothing.
REQUEUE_AFTER_SECONDS = 300


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
        self, db: AsyncDatabase[dict[str, Any]], celery: Celery, events: Publisher
    ) -> None:
        self.collection = db["jobs"]
        self.celery = celery
        self.events = events

    async def start(
        self, *, owner: ObjectId, kind: str, params: dict[str, Any],
        private: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Record a queued job, then hand it to the workers; a 503 if the queue is down.
        `private` fields are kept on the record for the worker, never shown."""
        # The record first: a worker that takes the job at once must find it.
        doc = {**new_job(owner, kind, params), **(private or {})}
        await self.collection.insert_one(doc)
        # Before it is handed over: a worker's "running" must not overtake "queued".
        await self.events.job(owner, public_job(doc))
        try:
            await queue.enqueue(self.celery, TASKS[kind], str(doc["_id"]))
        except queue.PUBLISH_FAILURES:
            failed = await self.collection.find_one_and_update(
                {"_id": doc["_id"]},
                {"$set": {"status": FAILED, "error": QUEUE_UNAVAILABLE,
                          "updated_at": utc_now()}},
                return_document=ReturnDocument.AFTER,
            )
            if failed is not None:
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

    async def export_file(self, *, owner: ObjectId, job_id: ObjectId) -> exports.ExportFile:
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
# Each change returns the record as it is after it and tells `notify` (if given) about it.
def _changed(doc: dict[str, Any] | None, notify: JobListener | None) -> dict[str, Any] | None:
    if doc is not None and notify is not None:
        notify(doc)
    return doc


def mark_running(
    jobs: Collection[dict[str, Any]], job_id: ObjectId, *, attempt: ObjectId,
    notify: JobListener | None = None,
) -> dict[str, Any] | None:
    """Take a queued job, or a running one whose lease has run out (its worker died), under a
    lease for `attempt`. None when there is nothing to do: the job is unknown, finished, or
    running on a live worker (a duplicate message)."""
    now = utc_now()
    return _changed(jobs.find_one_and_update(
        {"_id": job_id, "$or": [
            {"status": QUEUED},
            # $not $gt: also a running job with no lease at all.
            {"status": RUNNING, "lease_until": {"$not": {"$gt": now}}},
        ]},
        {"$set": {"status": RUNNING, "attempt": attempt,
                  "lease_until": now + timedelta(seconds=LEASE_SECONDS), "updated_at": now}},
        return_document=ReturnDocument.AFTER,
    ), notify)


def renew_lease(jobs: Collection[dict[str, Any]], job_id: ObjectId, attempt: ObjectId) -> bool:
    """Extend the lease of a running attempt; False when the job is no longer that attempt's."""
    renewed = jobs.update_one(
        {"_id": job_id, "status": RUNNING, "attempt": attempt},
        {"$set": {"lease_until": utc_now() + timedelta(seconds=LEASE_SECONDS)}},
    )
    return renewed.matched_count == 1


def release_lease(jobs: Collection[dict[str, Any]], job_id: ObjectId, attempt: ObjectId) -> None:
    """The attempt has ended without finishing the job (a transient error Celery will retry):
    its lease ends now, so the retry can take the job at once."""
    jobs.update_one(
        {"_id": job_id, "status": RUNNING, "attempt": attempt},
        {"$set": {"lease_until": utc_now()}},
    )


def requeue_interrupted(jobs: Collection[dict[str, Any]]) -> dict[str, Any] | None:
    """Claim one running job whose lease ran out: queued again (for the caller to publish),
    or failed once it has been interrupted MAX_INTERRUPTIONS times. One atomic update, so of
    several sweepers only one claims it."""
    now = utc_now()
    given_up = {"$gte": ["$interruptions", MAX_INTERRUPTIONS]}
    return jobs.find_one_and_update(
        {"status": RUNNING, "lease_until": {"$lt": now}},
        [
            {"$set": {"interruptions": {"$add": [{"$ifNull": ["$interruptions", 0]}, 1]}}},
            {"$set": {
                "status": {"$cond": [given_up, FAILED, QUEUED]},
                "error": {"$cond": [given_up, INTERRUPTED, "$error"]},
                "queued_at": now,
                "updated_at": now,
            }},
        ],
        return_document=ReturnDocument.AFTER,
    )


def requeue_stale(jobs: Collection[dict[str, Any]]) -> dict[str, Any] | None:
    """Claim one job queued for longer than REQUEUE_AFTER_SECONDS, to be published again."""
    now = utc_now()
    return jobs.find_one_and_update(
        {"status": QUEUED, "queued_at": {"$lt": now - timedelta(seconds=REQUEUE_AFTER_SECONDS)}},
        {"$set": {"queued_at": now}},
        return_document=ReturnDocument.AFTER,
    )


def set_progress(jobs: Collection[dict[str, Any]], job_id: ObjectId, *, done: int,
                 total: int | None, notify: JobListener | None = None) -> None:
    _changed(jobs.find_one_and_update(
        {"_id": job_id},
        {"$set": {"progress": {"done": done, "total": total}, "updated_at": utc_now()}},
        return_document=ReturnDocument.AFTER,
    ), notify)


def set_export_file(jobs: Collection[dict[str, Any]], job_id: ObjectId,
                    file_id: ObjectId) -> None:
    jobs.update_one({"_id": job_id}, {"$set": {EXPORT_FILE: file_id, "updated_at": utc_now()}})


def mark_done(jobs: Collection[dict[str, Any]], job_id: ObjectId, *,
              result: dict[str, Any], notify: JobListener | None = None) -> None:
    _changed(jobs.find_one_and_update(
        {"_id": job_id},
        {"$set": {"status": DONE, "result": result, "error": None, "updated_at": utc_now(),
                  "finished_at": utc_now()}},
        return_document=ReturnDocument.AFTER,
    ), notify)


def mark_failed(jobs: Collection[dict[str, Any]], job_id: ObjectId, *, error: str,
                notify: JobListener | None = None) -> None:
    _changed(jobs.find_one_and_update(
        {"_id": job_id, "status": {"$ne": DONE}},
        {"$set": {"status": FAILED, "error": error, "updated_at": utc_now()}},
        return_document=ReturnDocument.AFTER,
    ), notify)


def expire_file(jobs: Collection[dict[str, Any]]) -> dict[str, Any] | None:
    """Claim one finished job whose file (an export, an import's report) is older than
    FILE_KEEP_DAYS and still kept: it is marked expired (no more downloads start) and
    returned, for the caller to delete the file (its id is the record's EXPORT_FILE)."""
    now = utc_now()
    return jobs.find_one_and_update(
        {"status": DONE, "finished_at": {"$lt": now - timedelta(days=FILE_KEEP_DAYS)},
         "result.expired": {"$ne": True},
         "$or": [{"type": "export"}, {"type": "import", "result.rejected": {"$gt": 0}}]},
        {"$set": {"result.expired": True, "updated_at": now}},
    )
