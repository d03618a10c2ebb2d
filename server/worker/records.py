"""The worker's side of the job records: the synchronous transitions of server/domain/jobs.py's
records, on a pymongo Collection.

A running job holds a lease that its worker renews every few seconds. A worker killed with
`kill -9`, by the OOM killer or by a hard time limit stops renewing it; the sweeper (server/
worker/sweeper.py, in every worker) then queues the job again, at once rather than after the
broker's visibility timeout, which must outlast the longest job and is an hour. Every task is
safe to run again from the start, so a second attempt finishes what the first left half-done.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

from bson import ObjectId
from pymongo import ReturnDocument
from pymongo.collection import Collection

from server.domain.jobs import DONE, EXPORT_FILE, FAILED, FILE_KEEP_DAYS, QUEUED, RUNNING
from server.infra.clock import utc_now

# Told the job record as it is after each change of state or progress (the worker publishes it
# to the owner's live notifications: clients.WorkerClients.job_changed).
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
# lost its data, a master killed before its replica had the message): it is published again.
# A duplicate message is harmless: the second finds the job taken or finished and does
# nothing. The workers' setting job_requeue_after (TODO_JOB_REQUEUE_AFTER) overrides it.
REQUEUE_AFTER_SECONDS = 300


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


def requeue_stale(jobs: Collection[dict[str, Any]], *,
                  after: float = REQUEUE_AFTER_SECONDS) -> dict[str, Any] | None:
    """Claim one job queued for longer than `after` seconds, to be published again."""
    now = utc_now()
    return jobs.find_one_and_update(
        {"status": QUEUED, "queued_at": {"$lt": now - timedelta(seconds=after)}},
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
