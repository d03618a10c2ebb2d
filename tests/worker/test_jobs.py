"""Jobs end to end: the API queues them, a real Celery worker process runs them."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

import pytest
import redis
from bson import ObjectId
from pymongo import MongoClient

from scripts.local_services import free_port
from server.domain import jobs
from server.infra import queue
from server.infra.settings import PROJECT_ROOT, Settings
from server.worker import tasks
from server.worker.clients import WorkerClients
from tests.api.test_openapi import assert_matches
from tests.conftest import TEST_SECRET, another_instance, error_of, make_settings

SPEC = json.loads((PROJECT_ROOT / "server" / "openapi.json").read_text())


class Worker:
    """`celery -A server.worker worker` as an operator runs it, on the test's data; stopped by
    its pid with SIGTERM, Celery's warm shutdown."""

    def __init__(self, settings: Settings, log_file: Path) -> None:
        self.settings = settings
        self.log_file = log_file
        self.process: subprocess.Popen[bytes] | None = None

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update({
            "TODO_MONGO_URI": self.settings.mongo_uri,
            "TODO_REDIS_URL": self.settings.redis_url,
            "TODO_BROKER_URL": self.settings.broker_url,
            "TODO_RESULT_BACKEND": self.settings.result_backend,
            "TODO_BROKER_MASTER_NAME": self.settings.broker_master_name,
            "TODO_JOB_REQUEUE_AFTER": str(self.settings.job_requeue_after),
            "TODO_DB_NAME": self.settings.db_name,
            "TODO_REDIS_PREFIX": self.settings.redis_prefix,
            "TODO_SECRET": TEST_SECRET,
        })
        return env

    def start(self) -> None:
        # solo: the task runs in the worker process itself, whose coverage is then measured.
        command = [
            sys.executable, "-m", "celery", "-A", "server.worker.main", "worker", "--pool=solo",
            "--loglevel=INFO", "--without-gossip", "--without-mingle", "--without-heartbeat",
            f"--hostname=test-{uuid.uuid4().hex[:8]}@%h",
        ]
        with open(self.log_file, "ab") as log:
            self.process = subprocess.Popen(
                command, env=self.env(), stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, cwd=PROJECT_ROOT,
            )

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                os.kill(self.process.pid, signal.SIGKILL)
                self.process.wait(10)
        self.process = None

    def log(self) -> str:
        return self.log_file.read_text(errors="replace")


@pytest.fixture
def worker(services, settings, tmp_path) -> Iterator[Worker]:
    """A worker for the test's database, not started yet. After the test it is stopped and the
    queue emptied: a job left queued must not reach the next test's worker."""
    job_worker = Worker(settings, tmp_path / "celery.log")
    yield job_worker
    job_worker.stop()
    with redis.Redis.from_url(settings.broker_url) as broker:
        broker.flushdb()


async def wait_for_job(api, token, job_id, *, seconds=60.0):
    """The job once it is done or failed (polling as a client would)."""
    deadline = time.monotonic() + seconds
    while True:
        reply = await api.get(f"/jobs/{job_id}", token=token)
        assert reply.status == 200, reply.json
        if reply.json["status"] in (jobs.DONE, jobs.FAILED):
            return reply.json
        assert time.monotonic() < deadline, f"job still {reply.json['status']}: {reply.json}"
        await asyncio.sleep(0.1)


async def create(api, token, content, *, finished=False):
    reply = await api.post("/todo", token=token, json_body={"content": content})
    assert reply.status == 201, reply.json
    if finished:
        assert (await api.put(f"/todo/{reply.json['id']}/finish", token=token)).status == 200
    return reply.json["id"]


async def finished_days_ago(services, todo_id, days):
    moment = datetime.now(UTC) - timedelta(days=days)
    result = await services.db["todos"].update_one(
        {"_id": ObjectId(todo_id)}, {"$set": {"finished_at": moment}}
    )
    assert result.modified_count == 1


async def purge(api, token, days):
    reply = await api.post("/jobs", token=token,
                           json_body={"type": "purge", "older_than_days": days})
    assert reply.status == 202, reply.json
    assert reply.headers["Location"] == f"/jobs/{reply.json['id']}"
    return reply.json


@pytest.mark.gen_test(timeout=120)
async def test_purge_deletes_exactly_the_old_finished_todos_and_the_cached_page_follows(
    api, services, worker
):
    token = await api.register("alice")
    old = [await create(api, token, f"old {i}", finished=True) for i in range(3)]
    recent = await create(api, token, "finished yesterday", finished=True)
    just_now = await create(api, token, "finished just now", finished=True)
    open_one = await create(api, token, "still open")
    for todo_id in old:
        await finished_days_ago(services, todo_id, 30)
    await finished_days_ago(services, recent, 1)
    bob = await api.register("bob")
    bobs_old = await create(api, bob, "bob's old one", finished=True)
    await finished_days_ago(services, bobs_old, 30)

    # The first page is cached before the purge: the job must invalidate it.
    before = await api.get("/todo", token=token)
    assert len(before.json["data"]) == 6
    page_key = f"{services.settings.redis_prefix}page:{await user_id(services, 'alice')}"
    assert await services.redis.client.exists(page_key) == 1

    worker.start()
    queued = await purge(api, token, 7)
    assert_matches(SPEC, "Job", queued)
    assert queued["status"] == jobs.QUEUED
    assert queued["type"] == "purge"
    assert queued["params"] == {"older_than_days": 7}
    done = await wait_for_job(api, token, queued["id"])
    assert_matches(SPEC, "Job", done)
    assert done["status"] == jobs.DONE, (done, worker.log())
    assert done["result"] == {"deleted": 3}
    assert done["progress"] == {"done": 3, "total": 3}
    assert done["error"] is None

    after = await api.get("/todo", token=token)
    assert {t["id"] for t in after.json["data"]} == {recent, just_now, open_one}
    left = await services.db["todos"].distinct("_id", {})
    assert {str(i) for i in left} == {recent, just_now, open_one, bobs_old}


async def user_id(services, username):
    return (await services.db["users"].find_one({"username": username}))["_id"]


@pytest.mark.gen_test(timeout=120)
async def test_a_job_queued_while_no_worker_runs_is_picked_up_when_one_starts(
    api, services, worker
):
    token = await api.register("alice")
    todo_id = await create(api, token, "done long ago", finished=True)
    await finished_days_ago(services, todo_id, 400)
    queued = await purge(api, token, 365)
    await asyncio.sleep(1.5)
    waiting = await api.get(f"/jobs/{queued['id']}", token=token)
    assert waiting.json["status"] == jobs.QUEUED
    worker.start()
    done = await wait_for_job(api, token, queued["id"])
    assert (done["status"], done["result"]) == (jobs.DONE, {"deleted": 1}), worker.log()
    assert (await api.get("/todo", token=token)).json["data"] == []


@pytest.mark.gen_test(timeout=120)
async def test_a_job_that_breaks_is_failed_with_a_message_not_internals(api, services, worker):
    token = await api.register("alice")
    owner = await user_id(services, "alice")
    # A record the API would never write (no older_than_days): the task raises KeyError.
    doc = jobs.new_job(owner, "purge", {})
    await services.db["jobs"].insert_one(doc)
    await queue.enqueue(services.celery, jobs.TASKS["purge"], str(doc["_id"]))
    worker.start()
    failed = await wait_for_job(api, token, str(doc["_id"]))
    assert failed["status"] == jobs.FAILED
    assert failed["error"] == "the job failed unexpectedly"
    # Delivered again (or a stray message): a finished job is left as it is.
    await queue.enqueue(services.celery, jobs.TASKS["purge"], str(doc["_id"]))
    for _ in range(100):
        if "nothing to do" in worker.log():
            break
        await asyncio.sleep(0.1)
    assert "nothing to do" in worker.log()
    assert (await api.get(f"/jobs/{doc['_id']}", token=token)).json == failed


@pytest.mark.gen_test
async def test_another_users_job_and_a_malformed_id_are_404(api, worker):
    alice = await api.register("alice")
    bob = await api.register("bob")
    job = await purge(api, alice, 30)
    for token, path in [(bob, f"/jobs/{job['id']}"), (alice, "/jobs/not-an-id"),
                        (alice, f"/jobs/{ObjectId()}")]:
        assert error_of(await api.get(path, token=token)) == (404, "job not found")
    assert (await api.get(f"/jobs/{job['id']}", token=alice)).status == 200
    assert error_of(await api.get(f"/jobs/{job['id']}"))[0] == 401


@pytest.mark.gen_test
async def test_get_jobs_lists_the_callers_recent_jobs_only(api, worker):
    alice = await api.register("alice")
    bob = await api.register("bob")
    alices = [(await purge(api, alice, days))["id"] for days in range(22)]
    bobs = (await purge(api, bob, 5))["id"]
    listed = await api.get("/jobs", token=alice)
    assert listed.status == 200
    assert_matches(SPEC, "JobList", listed.json)
    assert [j["id"] for j in listed.json["data"]] == list(reversed(alices))[:20]
    assert [j["id"] for j in (await api.get("/jobs", token=bob)).json["data"]] == [bobs]
    fresh = await api.register("carol")
    assert (await api.get("/jobs", token=fresh)).json == {"data": []}


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({}, "type must be one of: purge"),
        ({"type": "import"}, "type must be one of: purge, export"),
        ({"type": ["purge"]}, "type must be one of: purge"),
        ({"type": "purge"}, "older_than_days must be an integer from 0 to 3650"),
        ({"type": "purge", "older_than_days": -1}, "older_than_days must be an integer"),
        ({"type": "purge", "older_than_days": 3651}, "older_than_days must be an integer"),
        ({"type": "purge", "older_than_days": "7"}, "older_than_days must be an integer"),
        ({"type": "purge", "older_than_days": 1.5}, "older_than_days must be an integer"),
        ({"type": "purge", "older_than_days": True}, "older_than_days must be an integer"),
        ({"type": "purge", "older_than_days": 7, "everyone": True}, "unknown field 'everyone'"),
        ([{"type": "purge"}], "request body must be a JSON object"),
        ({"type": "export"}, "format must be one of: json, csv"),
        ({"type": "export", "format": "xml"}, "format must be one of: json, csv"),
        ({"type": "export", "format": ["csv"]}, "format must be one of: json, csv"),
        ({"type": "export", "format": "csv", "older_than_days": 3}, "unknown field"),
    ],
)
@pytest.mark.gen_test
async def test_bad_job_bodies_are_400_and_queue_nothing(api, body, message):
    token = await api.register("alice")
    status, said = error_of(await api.post("/jobs", token=token, json_body=body))
    assert status == 400
    assert said.startswith(message), said
    assert (await api.get("/jobs", token=token)).json == {"data": []}


@pytest.mark.gen_test
async def test_job_bodies_must_be_json(api):
    token = await api.register("alice")
    form = await api.post("/jobs", token=token, body="type=purge",
                          headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert error_of(form)[0] == 415
    broken = await api.post("/jobs", token=token, body="{",
                            headers={"Content-Type": "application/json"})
    assert error_of(broken)[0] == 400


@pytest.mark.gen_test(timeout=60)
async def test_an_unreachable_queue_is_503_and_the_job_is_marked_failed(mongo_uri, redis_url):
    settings = make_settings(mongo_uri, redis_url,
                             broker_url=f"redis://127.0.0.1:{free_port()}/1")
    async with another_instance(settings) as api:
        token = await api.register("alice")
        reply = await api.post("/jobs", token=token,
                               json_body={"type": "purge", "older_than_days": 1})
        assert error_of(reply) == (503, jobs.QUEUE_UNAVAILABLE)
        assert reply.headers["Retry-After"] == "1"
        listed = (await api.get("/jobs", token=token)).json["data"]
        assert [(j["status"], j["error"]) for j in listed] == [
            (jobs.FAILED, jobs.QUEUE_UNAVAILABLE)
        ]


def test_a_job_whose_retries_ran_out_is_recorded_failed(mongo_uri, redis_url):
    """The last attempt of a job that keeps meeting a transient error (here: its Redis is gone)
    records the failure; earlier attempts leave it to Celery's retry."""
    settings = make_settings(mongo_uri, f"redis://127.0.0.1:{free_port()}/0",
                             redis_timeout=0.2)
    clients = WorkerClients(settings)
    with MongoClient(mongo_uri, tz_aware=True) as mongo:
        records = mongo[settings.db_name]["jobs"]
        try:
            doc = jobs.new_job(ObjectId(), "purge", {"older_than_days": 0})
            records.insert_one(doc)
            attempt = SimpleNamespace(request=SimpleNamespace(retries=0), max_retries=5)
            with pytest.raises(redis.exceptions.ConnectionError):
                tasks.run_job(attempt, clients, str(doc["_id"]), tasks.purge)
            left = records.find_one({"_id": doc["_id"]})
            # Still running, but its lease ended: Celery's retry takes it at once.
            assert left["status"] == jobs.RUNNING
            assert left["lease_until"] <= jobs.utc_now()
            attempt.request.retries = 5
            with pytest.raises(redis.exceptions.ConnectionError):
                tasks.run_job(attempt, clients, str(doc["_id"]), tasks.purge)
            failed = records.find_one({"_id": doc["_id"]})
            assert failed["status"] == jobs.FAILED
            assert failed["error"] == "the database or cache stayed unavailable; try again later"
        finally:
            clients.close()
            mongo.drop_database(settings.db_name)


def test_failure_messages_name_the_kind_of_failure_only():
    from celery.exceptions import SoftTimeLimitExceeded

    assert tasks.failure_message(SoftTimeLimitExceeded()) == (
        "the job took longer than its time limit"
    )
    assert tasks.failure_message(KeyError("older_than_days")) == "the job failed unexpectedly"
