"""The stack on a 3-member MongoDB replica set (`todo-stack up --replica-set 3`): the primary
killed or stepped down under a steady load through nginx loses no acknowledged write, and the
killed member comes back and catches up."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
import uuid
from collections.abc import Iterator
from typing import Any

import bson
import pytest
from bson import Timestamp
from pymongo import MongoClient
from pymongo.errors import PyMongoError

from scripts.backups.archive import Manifest
from scripts.backups.cli import backup_main, restore_main
from scripts.stack.config import StackConfig
from scripts.stack.supervisor import Supervisor
from tests.conftest import Api, consecutive_free_ports, running_stack
from tests.stack.stack_load import Load
from tests.stack.test_stack import assert_exactly_once, wait_for_jobs


@pytest.fixture(scope="module")
def cfg(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StackConfig]:
    yield from running_stack(tmp_path_factory.mktemp("replica-set") / "var", "todo_rs_test",
                             replica_set=3, mongo_port=consecutive_free_ports(3))


@pytest.fixture
def api(cfg: StackConfig) -> Iterator[Api]:
    client = Api(cfg.base_url)
    yield client
    client.close()


async def replica_set(api: Api) -> dict[str, Any]:
    reply = await api.get("/readyz")
    assert reply.status == 200, reply.body
    status: dict[str, Any] = reply.json["mongodb_replica_set"]
    return status


async def wait_for(api: Api, healthy: int, seconds: float = 60) -> dict[str, Any]:
    """The set's status once it has a primary and `healthy` members with no lag."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            status = await replica_set(api)
            caught_up = [m for m in status["members"] if m["healthy"] and m["lag_seconds"] == 0]
            if status["primary"] and len(caught_up) >= healthy:
                return status
        except (AssertionError, ConnectionError, KeyError):
            status = {}
        assert time.monotonic() < deadline, f"the set never got there: {status}"
        await asyncio.sleep(0.2)


def member_pid(cfg: StackConfig, host: str) -> int:
    port = host.rsplit(":", 1)[1]
    return int(Supervisor(cfg).ctl("pid", f"mongo:mongod_{port}").strip())


def count_on(host: str, cfg: StackConfig, owner_name: str) -> int:
    """The user's todos as one member holds them (read from that member alone)."""
    with MongoClient(f"mongodb://{host}/?directConnection=true",
                     readPreference="secondaryPreferred") as member:
        db = member[cfg.db_name]
        owner = db["users"].find_one({"username": owner_name})
        assert owner is not None
        return db["todos"].count_documents({"owner": owner["_id"]})


@pytest.mark.gen_test(timeout=120)
async def test_stack_runs_a_replica_set_and_reports_it(cfg, api):
    status = await wait_for(api, healthy=3)
    assert status["name"] == "todo"
    assert sorted(m["name"] for m in status["members"]) == cfg.mongo_hosts
    assert [m["state"] for m in status["members"]].count("PRIMARY") == 1
    metrics = (await Api(f"http://127.0.0.1:{cfg.ports[0]}").get("/metrics")).body.decode()
    assert f'todo_mongodb_member_primary{{member="{status["primary"]}"}} 1.0' in metrics
    assert "todo_mongodb_replication_lag_seconds{member=" in metrics


@pytest.mark.gen_test(timeout=180)
async def test_kill_9_of_the_primary_loses_no_acknowledged_write(cfg, api):
    before = await wait_for(api, healthy=3)
    token = await api.register("failover")
    for number in range(12):  # more than one page, so some reads go past the cache
        await api.post("/todo", token=token, json_body={"content": f"before {number}"})
    load = Load(api, token)
    running = asyncio.ensure_future(load.run(seconds=14))
    await asyncio.sleep(3)
    primary = before["primary"]
    os.kill(member_pid(cfg, primary), signal.SIGKILL)
    killed_at = time.monotonic()
    await running

    # Reads kept answering: the cached first page, and the rest from a secondary while
    # there was no primary.
    assert load.failed_reads == [], load.failed_reads[:5]
    # Writes stopped while the set elected a new primary, and for less than 5 s.
    pause = load.longest_write_pause()
    assert pause < 5, f"writes stopped for {pause:.2f}s"
    assert any(at > killed_at + pause for at in load.acknowledged_at)
    # Writes refused meanwhile were told so (503); retried with their Idempotency-Key, each
    # lands exactly once, and none acknowledged before was lost with the old primary.
    await load.retry_failed_writes()
    assert_exactly_once(cfg, load.acknowledged)

    # supervisor restarts the killed member: it rejoins as a secondary and catches up.
    after = await wait_for(api, healthy=3)
    assert after["primary"] != primary
    expected = 12 + len(load.acknowledged)
    deadline = time.monotonic() + 30
    while count_on(primary, cfg, "failover") != expected:
        assert time.monotonic() < deadline, "the rejoined member did not catch up"
        await asyncio.sleep(0.2)
    print(f"\nprimary kill: {load.reads} reads, {len(load.acknowledged)} writes "
          f"({len(load.failed_writes)} refused, then retried); writes stopped for at most "
          f"{pause:.2f}s")


@pytest.mark.gen_test(timeout=120)
async def test_a_step_down_fails_no_request(cfg, api):
    before = await wait_for(api, healthy=3)
    token = await api.register("stepdown")
    load = Load(api, token)
    running = asyncio.ensure_future(load.run(seconds=8))
    await asyncio.sleep(2)
    # The step-down may close the connection that asked for it.
    with (MongoClient(f"mongodb://{before['primary']}/?directConnection=true") as old_primary,
          contextlib.suppress(PyMongoError)):
        old_primary.admin.command("replSetStepDown", 30)
    await running

    assert load.failed_reads == []
    assert load.failed_writes == {}
    assert load.failed_updates == []
    assert_exactly_once(cfg, load.acknowledged)
    after = await wait_for(api, healthy=3)
    assert after["primary"] != before["primary"]
    print(f"\nstep-down: {load.reads} reads, {len(load.acknowledged)} writes, none failed; "
          f"longest pause {load.longest_write_pause():.2f}s")


def documents_at(client: MongoClient[Any], db_name: str, name: str,
                 cluster_time: list[int] | None) -> list[bytes]:
    """A collection's documents as they were at `cluster_time` (now, when None), each read
    the same way on both sides and encoded again, sorted: two lists are equal exactly when
    the collections hold the same documents. (That a restore writes the very bytes it read is
    tests/backups' to show.)"""
    db = client[db_name]
    if cluster_time is None:
        found = db[name].find()
    else:
        found = db.cursor_command(
            "find", name, batchSize=1000,
            readConcern={"level": "snapshot", "atClusterTime": Timestamp(*cluster_time)},
        )
    return sorted(bson.encode(document) for document in found)


@pytest.mark.gen_test(timeout=180)
async def test_backup_under_writes_restores_exactly_its_moment(cfg, api, mongo_uri, tmp_path):
    await wait_for(api, healthy=3)
    token = await api.register("backed_up")
    for number in range(30):
        await api.post("/todo", token=token, json_body={"content": f"kept {number}"})
    job = await api.post("/jobs", token=token, json_body={"type": "export", "format": "csv"})
    assert job.status == 202
    # Exported by a worker from a caught-up secondary: every todo written before it.
    [exported] = (await wait_for_jobs(api, token, [job.json["id"]])).values()
    assert exported["status"] == "done"
    assert exported["result"]["rows"] == 30
    load = Load(api, token, readers=1)
    running = asyncio.ensure_future(load.run(seconds=6))
    await asyncio.sleep(1)
    target = tmp_path / "backups"
    await asyncio.to_thread(backup_main, ["--var", cfg.var, "--out", str(target)])
    await running
    [directory] = list(target.iterdir())
    manifest = Manifest.load(directory)
    assert manifest.method == "snapshot"
    assert manifest.cluster_time
    assert {"users", "todos", "jobs"} <= {entry.name for entry in manifest.collections}

    # Into a fresh deployment (another server, another database): every collection equals the
    # source as it was at the backup's cluster time, though writes went on during the backup.
    fresh = f"restored_{uuid.uuid4().hex[:8]}"
    await asyncio.to_thread(restore_main, [str(directory), "--mongo-uri", mongo_uri,
                                           "--db-name", fresh])
    with MongoClient(cfg.mongo_uri) as source, MongoClient(mongo_uri) as restored:
        for entry in manifest.collections:
            was = documents_at(source, cfg.db_name, entry.name, manifest.cluster_time)
            assert documents_at(restored, fresh, entry.name, None) == was, entry.name
        assert len(was := documents_at(source, cfg.db_name, "todos", manifest.cluster_time)) > 30
        assert len(documents_at(source, cfg.db_name, "todos", None)) > len(was)
        indexes = {index["name"] for index in restored[fresh]["todos"].list_indexes()}
        assert "owner_idempotency_key" in indexes
        restored.drop_database(fresh)
