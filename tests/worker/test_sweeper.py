"""Leases and the sweeper: a job whose worker died is run again, once, without waiting for the
broker's hour-long visibility timeout; a job that keeps dying is given up."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from datetime import timedelta
from types import SimpleNamespace
from typing import Any

import pytest
from bson import ObjectId
from pymongo import MongoClient
from pymongo.collection import Collection

from server.domain import jobs
from server.infra.settings import Settings
from server.worker import records as job_records
from server.worker import sweeper, tasks
from server.worker.clients import WorkerClients
from tests.worker.test_jobs import create, finished_days_ago, user_id, wait_for_job
from tests.worker.test_jobs import worker as worker  # the fixture, shared


@pytest.fixture
def records(settings: Settings) -> Iterator[Collection[dict[str, Any]]]:
    with MongoClient(settings.mongo_uri, tz_aware=True) as mongo:
        yield mongo[settings.db_name]["jobs"]
        mongo.drop_database(settings.db_name)


def running_job(records, owner, *, lease_ago: float, interruptions: int = 0,
                params: dict[str, Any] | None = None) -> dict[str, Any]:
    """What a worker killed mid-job leaves: a running job whose lease ran out `lease_ago`
    seconds ago (negative: a lease still running)."""
    doc = jobs.new_job(owner, "purge", params or {"older_than_days": 365})
    doc.update(status=jobs.RUNNING, attempt=ObjectId(), interruptions=interruptions,
               lease_until=jobs.utc_now() - timedelta(seconds=lease_ago))
    records.insert_one(doc)
    return doc


@pytest.mark.gen_test(timeout=120)
async def test_a_job_whose_worker_died_is_run_again_when_a_worker_is_up(
    api, services, worker, records
):
    token = await api.register("alice")
    owner = await user_id(services, "alice")
    todo_id = await create(api, token, "done long ago", finished=True)
    await finished_days_ago(services, todo_id, 400)
    # Its message is in the broker's unacknowledged set for an hour: only the lease tells.
    orphan = running_job(records, owner, lease_ago=1)
    worker.start()
    done = await wait_for_job(api, token, str(orphan["_id"]))
    assert (done["status"], done["result"]) == (jobs.DONE, {"deleted": 1}), worker.log()
    assert records.find_one({"_id": orphan["_id"]})["interruptions"] == 1
    assert "queued again" in worker.log()


@pytest.mark.gen_test(timeout=120)
async def test_a_queued_job_whose_message_was_lost_is_published_again(
    api, services, worker, records
):
    token = await api.register("alice")
    owner = await user_id(services, "alice")
    lost = jobs.new_job(owner, "purge", {"older_than_days": 1})
    lost["queued_at"] -= timedelta(seconds=job_records.REQUEUE_AFTER_SECONDS + 1)
    records.insert_one(lost)  # and no message: the broker lost it
    worker.start()
    done = await wait_for_job(api, token, str(lost["_id"]))
    assert (done["status"], done["result"]) == (jobs.DONE, {"deleted": 0}), worker.log()


def test_job_requeue_after_sets_how_soon_a_queued_job_is_published_again(settings, records):
    owner = ObjectId()
    stale, fresh = jobs.new_job(owner, "purge", {}), jobs.new_job(owner, "purge", {})
    stale["queued_at"] -= timedelta(seconds=3)
    records.insert_many([stale, fresh])
    published: list[str] = []
    app = SimpleNamespace(send_task=lambda name, args, task_id: published.append(task_id))
    assert sweeper.sweep(app, records) == []  # type: ignore[arg-type]
    claimed = sweeper.sweep(app, records, requeue_after=2)  # type: ignore[arg-type]
    assert [job["_id"] for job in claimed] == [stale["_id"]]
    assert published == [str(stale["_id"])]
    # Sweeps come often enough for a short delay: at most 1.5 times it, then every 10 s.
    assert (sweeper.sweep_interval(2), sweeper.sweep_interval(300)) == (1, sweeper.SWEEP_SECONDS)


def test_a_job_interrupted_too_often_is_failed_not_queued_again(settings, records):
    owner = ObjectId()
    again = running_job(records, owner, lease_ago=1,
                        interruptions=job_records.MAX_INTERRUPTIONS - 2)
    given_up = running_job(records, owner, lease_ago=1,
                           interruptions=job_records.MAX_INTERRUPTIONS - 1)
    alive = running_job(records, owner, lease_ago=-20)
    published: list[str] = []
    app = SimpleNamespace(send_task=lambda name, args, task_id: published.append(task_id))

    notified: list[dict[str, Any]] = []
    claimed = sweeper.sweep(app, records, notify=notified.append)  # type: ignore[arg-type]

    assert sorted((str(j["_id"]), j["status"]) for j in claimed) == sorted([
        (str(again["_id"]), jobs.QUEUED), (str(given_up["_id"]), jobs.FAILED),
    ])
    assert published == [str(again["_id"])]
    assert notified == claimed  # both owners hear of it: one queued again, one failed
    failed = records.find_one({"_id": given_up["_id"]})
    assert failed["error"] == job_records.INTERRUPTED
    assert records.find_one({"_id": alive["_id"]})["status"] == jobs.RUNNING
    # Claimed once: the next sweep finds nothing more to do.
    assert sweeper.sweep(app, records) == []  # type: ignore[arg-type]


def test_a_duplicate_message_leaves_a_job_running_on_a_live_worker_alone(settings, records):
    clients = WorkerClients(settings)
    try:
        busy = running_job(records, ObjectId(), lease_ago=-20)
        attempt = SimpleNamespace(request=SimpleNamespace(retries=0), max_retries=5)
        assert tasks.run_job(attempt, clients, str(busy["_id"]), tasks.purge) == {}
        assert records.find_one({"_id": busy["_id"]})["attempt"] == busy["attempt"]
    finally:
        clients.close()


def test_a_running_attempt_keeps_its_lease_alive(settings, records):
    doc = running_job(records, ObjectId(), lease_ago=-1)
    attempt = doc["attempt"]
    with tasks.LeaseKeeper(records, doc["_id"], attempt, every=0.05):
        time.sleep(0.5)
        renewed = records.find_one({"_id": doc["_id"]})["lease_until"]
    assert renewed > doc["lease_until"] + timedelta(seconds=job_records.LEASE_SECONDS - 5)
    # Another attempt's keeper renews nothing.
    assert not job_records.renew_lease(records, doc["_id"], ObjectId())


def test_the_sweepers_queries_use_an_index(settings, records):
    from server.domain.indexes import INDEXES

    records.create_indexes(INDEXES["jobs"])
    now = jobs.utc_now()
    for query in ({"status": jobs.RUNNING, "lease_until": {"$lt": now}},
                  {"status": jobs.QUEUED, "queued_at": {"$lt": now}},
                  {"type": "export", "status": jobs.DONE, "finished_at": {"$lt": now}}):
        plan = records.find(query).explain()["queryPlanner"]["winningPlan"]
        assert "IXSCAN" in str(plan), (query, plan)


def test_uploads_no_job_will_read_are_deleted_once_old(settings, records):
    db = records.database
    day_old = ObjectId.from_datetime(
        jobs.utc_now() - timedelta(seconds=sweeper.ABANDONED_UPLOAD_SECONDS + 60)
    )

    def upload(started: ObjectId) -> ObjectId:
        # A file id made when `started` was: its time, then bytes of its own.
        file_id = ObjectId(started.binary[:4] + os.urandom(8))
        db["imports.chunks"].insert_many(
            [{"files_id": file_id, "n": n, "data": b"content\n"} for n in range(2)]
        )
        return file_id

    upload(day_old)              # its instance died mid-upload: no job
    finished = upload(day_old)   # its job finished but could not delete it
    waiting = upload(day_old)    # a job still queued (no worker for a day) will read it
    fresh = upload(ObjectId())   # perhaps still arriving
    for file_id, status in ((finished, jobs.DONE), (waiting, jobs.QUEUED)):
        doc = jobs.new_job(ObjectId(), "import", {})
        doc.update(status=status, **{jobs.IMPORT_FILE: file_id})
        records.insert_one(doc)

    assert sweeper.drop_abandoned_uploads(db) == 2
    left = set(db["imports.chunks"].distinct("files_id"))
    assert left == {waiting, fresh}  # not abandoned, not finished
