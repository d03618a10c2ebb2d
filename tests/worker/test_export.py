"""The export job end to end: a real worker writes the file to GridFS, the API streams it."""

from __future__ import annotations

import csv
import io
import json
from datetime import timedelta
from types import SimpleNamespace

import pytest
from bson import ObjectId
from pymongo import MongoClient

from server.domain import jobs
from server.infra.settings import PROJECT_ROOT
from server.worker import exporting, sweeper, tasks
from server.worker.clients import WorkerClients
from tests.api.test_openapi import assert_matches
from tests.conftest import error_of, make_settings
from tests.worker.test_jobs import create, purge, user_id, wait_for_job
from tests.worker.test_jobs import worker as worker  # the fixture, shared

SPEC = json.loads((PROJECT_ROOT / "server" / "openapi.json").read_text())
COUNT = 2500
# Contents CSV must quote (commas, quotes, newlines), and some that are not ASCII.
TRICKY = ['milk, eggs, "bread"', 'say "hi"\nthen leave', "line\r\nbreak", "=SUM(A1)", "ünï ✓"]


def contents(count: int) -> list[str]:
    return [TRICKY[i % len(TRICKY)] + f" #{i}" if i % 7 == 0 else f"todo {i}"
            for i in range(count)]


async def all_pages(api, token):
    """Every todo as GET /todo pages return them, newest first, following `next`."""
    todos, path = [], "/todo?limit=100"
    while path:
        page = await api.get(path, token=token)
        assert page.status == 200, page.json
        todos.extend(page.json["data"])
        path = page.json["next"] and page.json["next"].removeprefix(api.base_url)
    return todos


async def export(api, token, fmt):
    reply = await api.post("/jobs", token=token, json_body={"type": "export", "format": fmt})
    assert reply.status == 202, reply.json
    assert reply.headers["Location"] == f"/jobs/{reply.json['id']}"
    assert reply.json["params"] == {"format": fmt}
    assert reply.json["result_url"] is None
    return reply.json


async def seed(api, services, username):
    token = await api.register(username)
    owner = await user_id(services, username)
    await services.todos.create_many(owner=owner, contents=contents(COUNT))
    # Some finished, so both values of is_finished and finished_at show up.
    for todo in (await api.get("/todo?limit=3", token=token)).json["data"]:
        assert (await api.put(f"/todo/{todo['id']}/finish", token=token)).status == 200
    return token


@pytest.mark.gen_test(timeout=180)
async def test_json_and_csv_exports_hold_exactly_what_the_pages_list(api, services, worker):
    token = await seed(api, services, "alice")
    expected = await all_pages(api, token)
    assert len(expected) == COUNT
    worker.start()
    for fmt, content_type in [("json", "application/json"), ("csv", "text/csv")]:
        queued = await export(api, token, fmt)
        done = await wait_for_job(api, token, queued["id"], seconds=120)
        assert done["status"] == jobs.DONE, (done, worker.log())
        assert_matches(SPEC, "Job", done)
        assert done["progress"] == {"done": COUNT, "total": COUNT}
        assert done["result"]["rows"] == COUNT
        assert done["result"]["format"] == fmt
        assert done["result_url"] == f"/jobs/{queued['id']}/result"

        download = await api.get(done["result_url"], token=token)
        assert download.status == 200
        assert download.headers["Content-Type"].startswith(content_type)
        assert "charset=utf-8" in download.headers["Content-Type"]
        assert download.headers["Content-Disposition"] == (
            f'attachment; filename="todos-{queued["id"]}.{fmt}"'
        )
        if fmt == "json":
            assert json.loads(download.body) == expected
        else:
            rows = list(csv.DictReader(io.StringIO(download.body.decode("utf-8"), newline="")))
            assert list(rows[0]) == list(exporting.CSV_FIELDS)
            assert rows == [
                {**t, "is_finished": "true" if t["is_finished"] else "false",
                 "finished_at": t["finished_at"] or ""}
                for t in expected
            ]
            assert {r["content"] for r in rows} >= {c for c in contents(COUNT) if "\n" in c}
    files = await services.db["exports.files"].count_documents({})
    assert files == 2


@pytest.mark.gen_test(timeout=120)
async def test_an_empty_export_is_an_empty_array(api, worker):
    token = await api.register("alice")
    worker.start()
    done = await wait_for_job(api, token, (await export(api, token, "json"))["id"])
    assert (done["status"], done["result"]["rows"], done["progress"]) == (
        jobs.DONE, 0, {"done": 0, "total": 0}
    ), worker.log()
    assert (await api.get(done["result_url"], token=token)).body == b"[]"


@pytest.mark.gen_test(timeout=120)
async def test_results_of_others_unfinished_jobs_and_purges_are_refused(api, worker):
    alice = await api.register("alice")
    bob = await api.register("bob")
    await create(api, alice, "one")
    # No worker runs: the export stays queued.
    queued = await export(api, alice, "csv")
    path = f"/jobs/{queued['id']}/result"
    assert error_of(await api.get(path, token=alice)) == (409, jobs.NOT_DONE)
    assert_matches(SPEC, "Error", (await api.get(path, token=alice)).json)
    assert error_of(await api.get(path, token=bob)) == (404, "job not found")
    assert error_of(await api.get("/jobs/nope/result", token=alice)) == (404, "job not found")
    assert error_of(await api.get(f"/jobs/{ObjectId()}/result", token=alice))[0] == 404
    assert error_of(await api.get(path))[0] == 401
    purged = await purge(api, alice, 1)
    assert error_of(await api.get(f"/jobs/{purged['id']}/result", token=alice)) == (
        409, jobs.NOT_AN_EXPORT
    )

    # Once done, still only its owner gets it.
    worker.start()
    done = await wait_for_job(api, alice, queued["id"])
    assert done["status"] == jobs.DONE, worker.log()
    assert (await api.get(path, token=alice)).status == 200
    assert error_of(await api.get(path, token=bob)) == (404, "job not found")


@pytest.mark.gen_test(timeout=120)
async def test_an_export_file_is_deleted_after_its_keeping_time_and_then_gone(
    api, services, worker
):
    token = await api.register("alice")
    await create(api, token, "one")
    worker.start()
    fresh = await wait_for_job(api, token, (await export(api, token, "json"))["id"])
    old = await wait_for_job(api, token, (await export(api, token, "json"))["id"])
    assert (fresh["status"], old["status"]) == (jobs.DONE, jobs.DONE), worker.log()
    await services.db["jobs"].update_one(
        {"_id": ObjectId(old["id"])},
        {"$set": {"finished_at": jobs.utc_now() - timedelta(days=jobs.FILE_KEEP_DAYS, hours=1)}},
    )
    with MongoClient(services.settings.mongo_uri, tz_aware=True) as mongo:
        records = mongo[services.settings.db_name]["jobs"]
        assert sweeper.expire_files(records) == 1
        assert sweeper.expire_files(records) == 0
    expired = (await api.get(f"/jobs/{old['id']}", token=token)).json
    assert expired["result_url"] is None
    assert expired["result"]["expired"] is True
    assert error_of(await api.get(old["result_url"], token=token)) == (410, jobs.EXPIRED)
    files = await services.db["exports.files"].find().to_list()
    assert [str(f["_id"]) for f in files] == [fresh["result"]["file_id"]]
    assert (await api.get(fresh["result_url"], token=token)).status == 200


def test_a_redelivered_export_replaces_the_half_written_file(mongo_uri, redis_url):
    """The attempt before died half-way: its chunks (no file document yet) are deleted, and
    the job ends with exactly one file, the new one."""
    settings = make_settings(mongo_uri, redis_url)
    clients = WorkerClients(settings)
    with MongoClient(mongo_uri, tz_aware=True) as mongo:
        db = mongo[settings.db_name]
        try:
            owner = ObjectId()
            db["todos"].insert_many([
                {"owner": owner, "content": f"t{i}", "created_at": jobs.utc_now(),
                 "is_finished": False, "finished_at": None} for i in range(5)
            ])
            doc = jobs.new_job(owner, "export", {"format": "json"})
            stale = ObjectId()
            doc.update(status=jobs.RUNNING, **{jobs.EXPORT_FILE: stale})
            db["jobs"].insert_one(doc)
            # What a worker killed mid-upload leaves: chunks, and no file document yet.
            db["exports.chunks"].insert_many(
                [{"files_id": stale, "n": n, "data": b"[{half"} for n in range(3)]
            )
            assert db["exports.chunks"].count_documents({"files_id": stale}) == 3

            attempt = SimpleNamespace(request=SimpleNamespace(retries=0), max_retries=5)
            result = tasks.run_job(attempt, clients, str(doc["_id"]), tasks.export)
            assert result["rows"] == 5
            assert db["exports.chunks"].count_documents({"files_id": stale}) == 0
            assert [f["_id"] for f in db["exports.files"].find()] == [
                ObjectId(result["file_id"])
            ]
            assert db["jobs"].find_one({"_id": doc["_id"]})["status"] == jobs.DONE
            # Delivered once more after it finished: nothing changes.
            assert tasks.run_job(attempt, clients, str(doc["_id"]), tasks.export) == {}
            assert db["exports.files"].count_documents({}) == 1
        finally:
            clients.close()
            mongo.drop_database(settings.db_name)
