"""The job queue through Redis Sentinel: `kill -9` of its master with jobs queued and running
promotes the replica, the instance and the worker find it by themselves, and every job accepted
with 202 runs exactly once, one whose message died with the old master included.

Real processes on free loopback ports: the queue's master and replica (redis-server, as the
stack runs them), three Sentinels, a Celery worker, and an instance in the test's loop.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
from bson import ObjectId

from scripts.local_services import LocalServer, find_redis_server
from scripts.stack import sentinel
from server.domain import jobs
from server.infra import queue
from server.infra.clock import utc_now
from server.infra.settings import Settings
from tests.conftest import consecutive_free_ports, make_settings
from tests.worker.test_jobs import Worker, user_id, wait_for_job

# Short, so that the message lost with the master is published again within the test.
REQUEUE_AFTER = 2.0
# Enough todos that an export runs for a while: jobs are running and queued at the kill.
TODOS = 20000
HOST = "127.0.0.1"


def queue_node(directory: Path, port: int, *role: str) -> LocalServer:
    """A queue node as the stack runs it: every write on disk before it is acknowledged."""
    command = [
        find_redis_server(), "--port", str(port), "--bind", HOST, "--dir", str(directory),
        *sentinel.QUEUE_NODE_OPTIONS, "--save", "", "--daemonize", "no", *role,
    ]
    return LocalServer("redis", command, port, directory)


@dataclass
class SentinelQueue:
    master: LocalServer
    replica: LocalServer
    sentinels: list[LocalServer]

    @property
    def addresses(self) -> list[tuple[str, int]]:
        return [(HOST, server.port) for server in self.sentinels]

    def url(self, db: int) -> str:
        return sentinel.sentinel_url(self.addresses, db)

    def named_master(self) -> tuple[str, int] | None:
        return sentinel.ask_master(self.addresses)[0]

    def ready(self) -> bool:
        """The replica has the master's data, and every Sentinel knows it and the two other
        Sentinels (they learn of each other through the master within about 2 s): a failover
        can be voted."""
        with redis.Redis(HOST, self.replica.port, decode_responses=True) as client:
            if client.info("replication")["master_link_status"] != "up":
                return False
        for server in self.sentinels:
            with redis.Redis(HOST, server.port, decode_responses=True) as client:
                state = client.sentinel_master(sentinel.MASTER_NAME)
            if int(state["num-slaves"]) < 1 or int(state["num-other-sentinels"]) < 2:
                return False
        return True


def role(port: int) -> str:
    with redis.Redis(HOST, port, socket_timeout=1, decode_responses=True) as client:
        return str(client.role()[0])


def wait_until(check, seconds: float, what: str) -> float:
    """Seconds until `check()` is true (polled every 50 ms)."""
    start = time.monotonic()
    while not check():
        assert time.monotonic() - start < seconds, f"{what}: not within {seconds} s"
        time.sleep(0.05)
    return time.monotonic() - start


@pytest.fixture
def sentinel_queue(tmp_path: Path) -> Iterator[SentinelQueue]:
    base = consecutive_free_ports(5)
    master = queue_node(tmp_path / "master", base)
    replica = queue_node(tmp_path / "replica", base + 1, "--replicaof", HOST, str(base))
    sentinels = []
    for port in range(base + 2, base + 5):
        directory = tmp_path / f"sentinel-{port}"
        directory.mkdir()
        conf = directory / "sentinel.conf"
        conf.write_text(sentinel.sentinel_conf(port=port, directory=directory,
                                               master_port=base, sentinels=3))
        sentinels.append(LocalServer("sentinel", [find_redis_server(), str(conf), "--sentinel"],
                                     port, directory))
    servers = [master, replica, *sentinels]
    try:
        for server in servers:
            server.start()
        started = SentinelQueue(master, replica, sentinels)
        wait_until(started.ready, 15, "the Sentinels know the replica and each other")
        yield started
    finally:
        for server in servers:
            server.stop()


@pytest.fixture
def settings(mongo_uri: str, redis_url: str, sentinel_queue: SentinelQueue) -> Settings:
    return make_settings(mongo_uri, redis_url, broker_url=sentinel_queue.url(0),
                         result_backend=sentinel_queue.url(1), job_requeue_after=REQUEUE_AFTER)


@pytest.fixture
def worker(services, settings, tmp_path) -> Iterator[Worker]:
    job_worker = Worker(settings, tmp_path / "celery.log")
    yield job_worker
    job_worker.stop()
    if os.environ.get("KEEP_LOG"):
        Path(os.environ["KEEP_LOG"]).write_text(job_worker.log())


def test_celery_asks_the_sentinels_for_the_master_by_its_name(settings):
    app = queue.make_celery(settings, results=True)
    for option in ("broker_transport_options", "result_backend_transport_options"):
        assert app.conf[option]["master_name"] == sentinel.MASTER_NAME
        assert app.conf[option]["sentinel_kwargs"]["socket_timeout"] == 1.0
        assert app.conf[option]["visibility_timeout"] == 3600  # conf/celeryconfig.py's, kept
    # A master cut off never closes its connections: nothing waits on one for ever.
    assert app.conf.broker_transport_options["socket_timeout"] == queue.MASTER_TIMEOUT_SECONDS
    assert app.conf.broker_transport_options["health_check_interval"] == 5
    assert app.conf.redis_socket_timeout == queue.MASTER_TIMEOUT_SECONDS


async def export(api, token) -> str:
    reply = await api.post("/jobs", token=token, json_body={"type": "export", "format": "json"})
    assert reply.status == 202, reply.json
    return str(reply.json["id"])


async def status_of(services, job_id: str) -> str:
    doc = await services.db["jobs"].find_one({"_id": ObjectId(job_id)})
    return str(doc["status"])


@pytest.mark.gen_test(timeout=90)
async def test_kill_9_of_the_queue_master_loses_no_accepted_job_and_runs_each_once(
    api, services, settings, sentinel_queue, worker
):
    token = await api.register("alice")
    owner = await user_id(services, "alice")
    await services.todos.create_many(owner=owner, contents=[f"todo {n}" for n in range(TODOS)],
                                     newest=utc_now())
    worker.start()
    accepted = [await export(api, token) for _ in range(4)]
    while True:  # until the first one runs
        if await status_of(services, accepted[0]) != jobs.QUEUED:
            break
        await asyncio.sleep(0.05)

    # A job the master acknowledges but never ships to its replica: the replica is paused and
    # cut off first, so the message dies with the master (asynchronous replication's window).
    replica_pid, master_pid = sentinel_queue.replica.pid(), sentinel_queue.master.pid()
    assert replica_pid
    assert master_pid
    os.kill(replica_pid, signal.SIGSTOP)
    try:
        with redis.Redis(HOST, sentinel_queue.master.port) as master:
            master.client_kill_filter(_type="replica")
        lost = await export(api, token)
        os.kill(master_pid, signal.SIGKILL)
        killed_at = time.monotonic()
        killed = sentinel_queue.master.process
        assert killed is not None
        killed.wait(5)  # reaped
        sentinel_queue.master.stop()  # forgets its pid
    finally:
        os.kill(replica_pid, signal.SIGCONT)
    with redis.Redis(HOST, sentinel_queue.replica.port) as replica:
        waiting = b"".join(replica.lrange("celery", 0, -1))
    assert lost.encode() not in waiting
    assert accepted[-1].encode() in waiting  # queued before: replicated, and still there

    promoted = (HOST, sentinel_queue.replica.port)
    await asyncio.to_thread(
        wait_until, lambda: sentinel_queue.named_master() == promoted
        and role(promoted[1]) == "master", 15, "the replica promoted")
    failover = time.monotonic() - killed_at
    # The instance finds the new master by itself: the next job is accepted and runs.
    accepted += [lost, await export(api, token)]

    for job_id in accepted:
        done = await wait_for_job(api, token, job_id, seconds=40)
        assert done["status"] == jobs.DONE, (done, worker.log())
        assert done["result"]["rows"] == TODOS
        if job_id == lost:
            lost_done = time.monotonic() - killed_at
    log = worker.log()
    for job_id in accepted:  # each ran once: a duplicate message finds its job taken or done
        assert log.count(f"job {job_id}: exported") == 1, log
    assert f"job {lost}: queued again" in log
    print(f"\nfailover {failover:.2f} s; the job whose message was lost done "
          f"{lost_done:.2f} s after the kill")
    assert failover < 10

    # The old master comes back as the new master's replica, never as a second master.
    arguments = sentinel.role_arguments((HOST, sentinel_queue.master.port),
                                        sentinel_queue.addresses, replica_of=None, wait=5)
    assert arguments == ["--replicaof", HOST, str(promoted[1])]
    sentinel_queue.master.command += arguments
    sentinel_queue.master.start()
    await asyncio.to_thread(wait_until, lambda: role(sentinel_queue.master.port) == "slave",
                            10, "the old master a replica")
