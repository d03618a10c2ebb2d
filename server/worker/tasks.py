"""The Celery tasks, all in this module, run with the synchronous clients of
server/worker/clients.py.

Every task is safe to run twice: a message is acknowledged only once its task has finished,
so a worker that dies half-way leaves it to be delivered again.
"""

from __future__ import annotations

import logging
import threading
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from bson import ObjectId
from celery import Celery
from celery.exceptions import SoftTimeLimitExceeded
from pymongo.collection import Collection
from pymongo.errors import AutoReconnect, NetworkTimeout, PyMongoError
from redis import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from server.domain import jobs
from server.infra import notifications
from server.infra.cache_keys import VERSION_TTL, first_page_keys, new_version
from server.infra.settings import Settings
from server.worker import exporting, importing
from server.worker.clients import WorkerClients
from server.worker.import_formats import ImportFileError
from server.worker.records import (
    LEASE_RENEW_SECONDS,
    mark_done,
    mark_failed,
    mark_running,
    release_lease,
    renew_lease,
    set_export_file,
    set_progress,
)

log = logging.getLogger("todo.tasks")

# Worth another try: the server was unreachable or slow for a moment. Each task is idempotent,
# so running it again from the start is safe. (ServerSelectionTimeoutError is an AutoReconnect.)
TRANSIENT = (AutoReconnect, NetworkTimeout, RedisConnectionError, RedisTimeoutError)
MAX_RETRIES = 5
RETRY_BACKOFF_MAX = 60


class Job(Protocol):
    def __call__(self, clients: WorkerClients, job: dict[str, Any]) -> dict[str, Any]: ...


def invalidate_first_page(client: Redis, *, prefix: str, owner: str) -> None:
    """Exactly what server/infra/cache.py's PageCache.invalidate does, from a worker: a new
    random version and no cached page, so every instance's next read of the page comes from
    MongoDB."""
    page_key, version_key, _lock_key = first_page_keys(prefix, owner)
    with client.pipeline(transaction=True) as pipe:
        pipe.set(version_key, new_version(), ex=VERSION_TTL)
        pipe.delete(page_key)
        pipe.execute()


def bulk_change(clients: WorkerClients, owner: ObjectId, action: str, count: int) -> None:
    """Many of the owner's todos changed (a purge, an import): the cached first page goes, then
    the owner's sockets hear of it. Before the job shows as done: a client that sees "done"
    must not read a stale page."""
    invalidate_first_page(clients.redis, prefix=clients.settings.redis_prefix, owner=str(owner))
    if count:
        clients.events.todos_changed(owner, action, count)


def new_result_file(clients: WorkerClients, job: dict[str, Any]) -> ObjectId:
    """The id of the file this attempt writes (an export, an import's report), on the record
    before its first chunk is written. A redelivery deletes the file of the attempt before (or
    the chunks of an upload it never closed), so a job never has two results."""
    if job.get(jobs.EXPORT_FILE) is not None:
        exporting.discard(clients.db, job[jobs.EXPORT_FILE])
    file_id = ObjectId()
    set_export_file(clients.db["jobs"], job["_id"], file_id)
    return file_id


class LeaseKeeper:
    """Renews a running attempt's lease from a thread while the job runs, so that a job that
    is busy (one long MongoDB call, say) is never taken for the job of a dead worker."""

    def __init__(self, records: Collection[dict[str, Any]], job_id: ObjectId,
                 attempt: ObjectId, *, every: float = LEASE_RENEW_SECONDS) -> None:
        self.records, self.job_id, self.attempt, self.every = records, job_id, attempt, every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._renew, name=f"lease-{job_id}", daemon=True)

    def _renew(self) -> None:
        while not self._stop.wait(self.every):
            try:
                if not renew_lease(self.records, self.job_id, self.attempt):
                    return  # finished, failed, or (after a long outage) taken by another
            except PyMongoError as exc:
                log.warning("job %s: could not renew its lease: %s", self.job_id, exc)

    def __enter__(self) -> LeaseKeeper:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()


def purge(clients: WorkerClients, job: dict[str, Any]) -> dict[str, Any]:
    """Delete the owner's finished todos older than the job's `older_than_days`."""
    records, job_id = clients.db["jobs"], job["_id"]
    owner = job["owner"]
    cutoff = datetime.now(UTC) - timedelta(days=job["params"]["older_than_days"])
    doomed = {"owner": owner, "is_finished": True, "finished_at": {"$lt": cutoff}}
    todos = clients.db["todos"]
    notify = clients.job_changed
    set_progress(records, job_id, done=0, total=todos.count_documents(doomed), notify=notify)
    deleted = todos.delete_many(doomed).deleted_count
    bulk_change(clients, owner, notifications.PURGED, deleted)
    set_progress(records, job_id, done=deleted, total=deleted, notify=notify)
    result = {"deleted": deleted}
    mark_done(records, job_id, result=result, notify=notify)
    log.info("job %s: purged %d todos of %s", job_id, deleted, owner)
    return result


def export(clients: WorkerClients, job: dict[str, Any]) -> dict[str, Any]:
    """Write the owner's todos, newest first, to a GridFS file in the job's format."""
    records, job_id = clients.db["jobs"], job["_id"]
    owner, fmt = job["owner"], job["params"]["format"]
    file_id = new_result_file(clients, job)
    notify = clients.job_changed
    # A secondary's copy, as of now: every todo written before the job ran is in the file.
    with clients.todos_as_of_now() as (todos, session):
        total = todos.count_documents({"owner": owner}, session=session)
        set_progress(records, job_id, done=0, total=total, notify=notify)
        rows = exporting.write_export(
            clients.db, todos=todos, session=session, owner=owner, job_id=job_id, fmt=fmt,
            file_id=file_id,
            progress=lambda done: set_progress(records, job_id, done=done, total=total,
                                                    notify=notify),
        )
    # Todos created or deleted while it ran: the file is the truth.
    set_progress(records, job_id, done=rows, total=rows, notify=notify)
    result = {"rows": rows, "format": fmt, "file_id": str(file_id)}
    mark_done(records, job_id, result=result, notify=notify)
    log.info("job %s: exported %d todos of %s as %s", job_id, rows, owner, fmt)
    return result


def import_todos(clients: WorkerClients, job: dict[str, Any]) -> dict[str, Any]:
    """Import the job's uploaded file: every good row once, the rejected ones reported."""
    records, job_id = clients.db["jobs"], job["_id"]
    report_id = new_result_file(clients, job)
    notify = clients.job_changed
    try:
        result = importing.run(
            clients.db, job, upload_id=job[jobs.IMPORT_FILE], report_id=report_id,
            progress=lambda done, total: set_progress(records, job_id, done=done,
                                                           total=total, notify=notify),
        )
    except ImportFileError as exc:
        # The file itself is wrong: nothing was imported, and another try would not help.
        mark_failed(records, job_id, error=str(exc), notify=notify)
        log.info("job %s: import refused: %s", job_id, exc)
        return {"error": str(exc)}
    owner = job["owner"]
    bulk_change(clients, owner, notifications.IMPORTED, result["imported"])
    mark_done(records, job_id, result=result, notify=notify)
    log.info("job %s: imported %d todos of %s (%d duplicates, %d rejected)", job_id,
             result["imported"], owner, result["duplicates"], result["rejected"])
    return result


def drop_finished_upload(clients: WorkerClients, job_id: str) -> None:
    """Delete an import's uploaded file once its job is done or failed (a retry still needs
    it). Also after a redelivery of a job that had finished: the earlier attempt may have died
    between finishing and this."""
    try:
        job = clients.db["jobs"].find_one(
            {"_id": ObjectId(job_id), "status": {"$in": [jobs.DONE, jobs.FAILED]}}
        )
        if job is not None and job.get(jobs.IMPORT_FILE) is not None:
            importing.discard_upload(clients.db, job[jobs.IMPORT_FILE])
    except PyMongoError:
        log.warning("job %s: could not delete its uploaded file", job_id, exc_info=True)


def failure_message(exc: BaseException) -> str:
    """What the job's owner is told; the worker's log has the details."""
    if isinstance(exc, TRANSIENT):
        return "the database or cache stayed unavailable; try again later"
    if isinstance(exc, SoftTimeLimitExceeded):
        return "the job took longer than its time limit"
    return "the job failed unexpectedly"


def _record_failure(clients: WorkerClients, job_id: ObjectId, exc: BaseException) -> None:
    try:
        mark_failed(clients.db["jobs"], job_id, error=failure_message(exc),
                         notify=clients.job_changed)
    except PyMongoError:
        log.exception("job %s: could not record its failure", job_id)


def run_job(task: Any, clients: WorkerClients, job_id: str, work: Job) -> dict[str, Any]:
    """Take the job a message names and run `work` on it under a lease; a failure that ends
    the job is recorded. A message for a job that is finished, unknown or running on a live
    worker (a redelivery racing the sweeper) does nothing."""
    oid, attempt = ObjectId(job_id), ObjectId()
    records = clients.db["jobs"]
    job = mark_running(records, oid, attempt=attempt, notify=clients.job_changed)
    if job is None:
        log.warning("job %s: finished, unknown or running elsewhere; nothing to do", job_id)
        return {}
    try:
        with LeaseKeeper(records, oid, attempt):
            return work(clients, job)
    except TRANSIENT as exc:
        if task.request.retries >= task.max_retries:
            _record_failure(clients, oid, exc)
        else:
            _release(records, oid, attempt)
        raise  # with retries left, Celery runs the task again later (autoretry_for)
    except Exception as exc:
        log.exception("job %s failed", job_id)
        _record_failure(clients, oid, exc)
        raise


def _release(records: Collection[dict[str, Any]], job_id: ObjectId, attempt: ObjectId) -> None:
    try:
        release_lease(records, job_id, attempt)
    except PyMongoError:
        log.warning("job %s: could not release its lease; it is taken again once it runs out",
                    job_id)


def register(app: Celery, settings: Settings) -> None:
    """Register every task on `app`, with the clients of the worker that runs them."""
    clients = WorkerClients(settings)

    def run_purge(task: Any, job_id: str) -> dict[str, Any]:
        return run_job(task, clients, job_id, purge)

    def run_export(task: Any, job_id: str) -> dict[str, Any]:
        return run_job(task, clients, job_id, export)

    def run_import(task: Any, job_id: str) -> dict[str, Any]:
        try:
            return run_job(task, clients, job_id, import_todos)
        finally:
            drop_finished_upload(clients, job_id)

    for kind, run in (("purge", run_purge), ("export", run_export), ("import", run_import)):
        app.task(
            name=jobs.TASKS[kind],
            bind=True,
            autoretry_for=TRANSIENT,
            retry_backoff=True,
            retry_backoff_max=RETRY_BACKOFF_MAX,
            retry_jitter=True,
            max_retries=MAX_RETRIES,
        )(run)
