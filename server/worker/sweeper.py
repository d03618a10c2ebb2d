"""The sweeper: jobs whose worker died are queued again, lost messages published again, and
files nobody will read any more (expired results, abandoned uploads) deleted.

It runs in every worker's main process, on a thread, from the moment the worker is ready until
it shuts down. Claims are atomic in MongoDB, so several workers sweeping at once publish each
job once.

Why not leave it to the broker? With Redis, a message taken by a worker that dies comes back
only after the visibility timeout, and that must be longer than the longest job (an hour):
a worker killed half-way through an import would leave its user waiting for an hour.
"""

from __future__ import annotations

import logging
import threading
from datetime import timedelta
from functools import partial
from typing import Any

from bson import ObjectId
from celery import Celery, signals
from pymongo.collection import Collection
from pymongo.database import Database
from pymongo.errors import PyMongoError

from server.domain import jobs, upload_files
from server.infra import queue
from server.infra.clock import utc_now
from server.infra.settings import Settings
from server.worker import exporting, importing
from server.worker.clients import WorkerClients
from server.worker.records import (
    REQUEUE_AFTER_SECONDS,
    JobListener,
    expire_file,
    requeue_interrupted,
    requeue_stale,
)

log = logging.getLogger("todo.sweeper")

SWEEP_SECONDS = 10.0
# An upload cut short by its instance dying leaves chunks in GridFS and no job. Those older
# than this (far past the longest an upload may take) and read by no waiting or running job
# are deleted.
ABANDONED_UPLOAD_SECONDS = 86400
# Per sweep and kind: a backlog is worked through over several sweeps, never all at once.
MAX_CLAIMS = 100


def sweep(app: Celery, records: Collection[dict[str, Any]], *,
          notify: JobListener | None = None,
          requeue_after: float = REQUEUE_AFTER_SECONDS) -> list[dict[str, Any]]:
    """One pass: every claimed job, queued again (and published) or failed for good; its
    owner is told (`notify`) when its state changed. A job still queued after `requeue_after`
    seconds is published again."""
    claimed = []
    for claim in (requeue_interrupted, partial(requeue_stale, after=requeue_after)):
        for _ in range(MAX_CLAIMS):
            job = claim(records)
            if job is None:
                break
            claimed.append(job)
            if notify is not None and claim is requeue_interrupted:
                notify(job)
            if job["status"] == jobs.FAILED:
                log.warning("job %s: %s", job["_id"], job["error"])
                if job.get(jobs.IMPORT_FILE) is not None:  # no attempt will read it any more
                    importing.discard_upload(records.database, job[jobs.IMPORT_FILE])
                continue
            log.warning("job %s: queued again (its worker stopped, or its message was lost)",
                        job["_id"])
            try:
                queue.publish(app, jobs.TASKS[job["type"]], str(job["_id"]))
            except queue.PUBLISH_FAILURES as exc:
                # Still queued: published again once `requeue_after` seconds have passed.
                log.warning("job %s: could not publish it again: %s", job["_id"], exc)
    return claimed


def expire_files(records: Collection[dict[str, Any]]) -> int:
    """Delete the files of finished jobs past their keeping time; how many."""
    expired = 0
    for _ in range(MAX_CLAIMS):
        job = expire_file(records)
        if job is None:
            break
        exporting.discard(records.database, job[jobs.EXPORT_FILE])
        expired += 1
    return expired


def drop_abandoned_uploads(db: Database[dict[str, Any]]) -> int:
    """Delete uploads no job will read: abandoned mid-way, or left by a job that finished
    while MongoDB was failing; how many. A file's id tells when its upload started."""
    cutoff = ObjectId.from_datetime(utc_now() - timedelta(seconds=ABANDONED_UPLOAD_SECONDS))
    old = db[f"{upload_files.BUCKET}.chunks"].distinct("files_id", {"files_id": {"$lt": cutoff}})
    dropped = 0
    for file_id in old[:MAX_CLAIMS]:
        reader = db["jobs"].find_one(
            {jobs.IMPORT_FILE: file_id, "status": {"$in": [jobs.QUEUED, jobs.RUNNING]}}
        )
        if reader is None:
            importing.discard_upload(db, file_id)
            dropped += 1
    return dropped


def sweep_interval(requeue_after: float) -> float:
    """Seconds between two sweeps: SWEEP_SECONDS, or half of a shorter requeue delay. A lost
    message is published again at most `requeue_after` plus one interval after it was queued
    (300 + 10 s by default; 1.5 times `requeue_after` below 20 s)."""
    return min(SWEEP_SECONDS, requeue_after / 2)


class Sweeper:
    """Sweeps every `every` seconds on a daemon thread, between start() and stop()."""

    def __init__(self, app: Celery, clients: WorkerClients, *,
                 every: float = SWEEP_SECONDS,
                 requeue_after: float = REQUEUE_AFTER_SECONDS) -> None:
        self.app, self.clients, self.every = app, clients, every
        self.requeue_after = requeue_after
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _run(self) -> None:
        while True:
            try:
                sweep(self.app, self.clients.db["jobs"], notify=self.clients.job_changed,
                      requeue_after=self.requeue_after)
                expire_files(self.clients.db["jobs"])
                drop_abandoned_uploads(self.clients.db)
            except PyMongoError as exc:
                log.warning("sweep skipped, MongoDB unavailable: %s", exc)
            if self._stop.wait(self.every):
                return

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="job-sweeper", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.clients.close()


def install(app: Celery, settings: Settings) -> None:
    """Run a sweeper in the worker of `app` while it is up: from worker_ready (its pool is
    started, so no child inherits the sweeper's connections) to worker_shutdown."""
    running = Sweeper(app, WorkerClients(settings),
                      every=sweep_interval(settings.job_requeue_after),
                      requeue_after=settings.job_requeue_after)

    def start(sender: Any = None, **_: Any) -> None:
        if sender is not None and sender.app is app:
            running.start()

    def stop(sender: Any = None, **_: Any) -> None:
        running.stop()

    # weak=False: the handlers are closures that nothing else holds on to.
    signals.worker_ready.connect(start, weak=False)
    signals.worker_shutdown.connect(stop, weak=False)
