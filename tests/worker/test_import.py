"""The import job end to end: a multipart upload streamed to GridFS, a real worker imports it."""

from __future__ import annotations

import asyncio
import csv
import dataclasses
import gc
import io
import json
import time
from collections.abc import Iterator
from datetime import timedelta
from types import SimpleNamespace

import pytest
from bson import ObjectId
from pymongo import MongoClient

from server.domain import import_form, jobs, uploads, validation
from server.infra.settings import PROJECT_ROOT
from server.worker import import_formats, importing, sweeper, tasks
from server.worker import records as job_records
from server.worker.clients import WorkerClients
from tests.api.test_openapi import assert_matches
from tests.conftest import another_instance, error_of, make_settings
from tests.worker.test_export import all_pages
from tests.worker.test_jobs import user_id, wait_for_job
from tests.worker.test_jobs import worker as worker  # the fixture, shared

SPEC = json.loads((PROJECT_ROOT / "server" / "openapi.json").read_text())
BOUNDARY = "----todo-test-7MA4YWxkTrZu0gW"
MULTIPART = {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}
# Big enough for the 100,000-row file (about 2 MB), small enough to go over quickly.
MAX_UPLOAD = 4 * 1024 * 1024


@pytest.fixture
def settings(mongo_uri, redis_url):
    return make_settings(mongo_uri, redis_url, max_upload_size=MAX_UPLOAD)


def form(file: bytes | None, *, fields: dict[str, str] | None = None,
         filename: str = "todos.csv", file_type: str | None = "text/csv") -> bytes:
    """A multipart/form-data body: the text fields (type=import unless told), then the file."""
    parts = []
    for name, value in ({"type": "import"} if fields is None else fields).items():
        parts.append(f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'
                     f"{value}\r\n".encode())
    if file is not None:
        head = (f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file";'
                f' filename="{filename}"\r\n')
        if file_type:
            head += f"Content-Type: {file_type}\r\n"
        parts.append(head.encode() + b"\r\n" + file + b"\r\n")
    parts.append(f"--{BOUNDARY}--\r\n".encode())
    return b"".join(parts)


async def upload(api, token, data: bytes, **options):
    return await api.post("/jobs", token=token, body=form(data, **options), headers=MULTIPART)


async def start_import(api, token, data: bytes, **options):
    reply = await upload(api, token, data, **options)
    assert reply.status == 202, reply.json
    assert reply.headers["Location"] == f"/jobs/{reply.json['id']}"
    assert_matches(SPEC, "Job", reply.json)
    return reply.json


def csv_file(rows: list[list[str]], header=("content", "is_finished")) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(header)
    writer.writerows(rows)
    return out.getvalue().encode("utf-8")


async def stored_uploads(services) -> tuple[int, int]:
    db = services.db
    return (await db["imports.files"].count_documents({}),
            await db["imports.chunks"].count_documents({}))


async def eventually_no_uploads(services, seconds=10.0):
    deadline = time.monotonic() + seconds
    while await stored_uploads(services) != (0, 0):
        assert time.monotonic() < deadline, await stored_uploads(services)
        await asyncio.sleep(0.05)


# -- (a) 100,000 rows, with progress -------------------------------------------------------------
@pytest.mark.gen_test(timeout=300)
async def test_a_100000_row_import_shows_progress_and_imports_every_row(api, services, worker):
    token = await api.register("alice")
    count = importing.MAX_IMPORT_ROWS
    data = csv_file([[f"todo {i}", "true" if i % 10 == 0 else "false"] for i in range(count)])
    assert 1_000_000 < len(data) < MAX_UPLOAD
    worker.start()
    started = time.monotonic()
    queued = await start_import(api, token, data, fields={"type": "import"})
    assert queued["params"]["format"] == "csv"
    assert queued["params"]["size"] == len(data)
    assert queued["params"]["filename"] == "todos.csv"
    seen = []
    while True:
        job = (await api.get(f"/jobs/{queued['id']}", token=token)).json
        seen.append(job["progress"])
        if job["status"] in (jobs.DONE, jobs.FAILED):
            break
        await asyncio.sleep(0.01)
    elapsed = time.monotonic() - started
    print(f"\n100,000-row import: {elapsed:.1f} s from upload to done")
    assert job["status"] == jobs.DONE, (job, worker.log())
    assert_matches(SPEC, "Job", job)
    assert job["result"] == {"imported": count, "duplicates": 0, "rejected": 0, "errors": []}
    assert job["progress"] == {"done": count, "total": count}
    assert job["result_url"] is None
    # It was seen part of the way, and never going backwards.
    partial = [p["done"] for p in seen if p["total"] == count and 0 < p["done"] < count]
    assert partial, seen[:: max(1, len(seen) // 20)]
    done_values = [p["done"] for p in seen]
    assert done_values == sorted(done_values)

    owner = await user_id(services, "alice")
    assert await services.db["todos"].count_documents({"owner": owner}) == count
    first = (await api.get("/todo", token=token)).json
    assert [t["content"] for t in first["data"]] == [f"todo {i}" for i in range(10)]
    assert [t["is_finished"] for t in first["data"]] == [True] + [False] * 9
    assert first["data"][0]["finished_at"] is not None
    middle = (await api.get("/todo?start=50000&limit=3", token=token)).json
    assert [t["content"] for t in middle["data"]] == ["todo 50000", "todo 50001", "todo 50002"]
    last = (await api.get(f"/todo?start={count - 1}", token=token)).json
    assert ([t["content"] for t in last["data"]], last["next"]) == ([f"todo {count - 1}"], None)
    await eventually_no_uploads(services)


# -- (b) bad rows: reported by line, good rows imported ----------------------------------------
BAD_JSON = b"""[
  {"content": "first"},
  {"content": "   "},
  {"content": "%s"},
  {"content": "finished", "is_finished": true},
  {"content": "wrong flag", "is_finished": "yes"},
  {"content": "who", "owner": "someone else"},
  42,
  {"content": ["not", "text"]},
  {"is_finished": false},
  {"id": "665f1c2e9b1d4a3f8c0e7b35", "content": "from an export",
   "created_at": "2025-06-04T13:05:18.123Z", "is_finished": false, "finished_at": null},
  {"content": "$ne"}
]
""" % (b"x" * 1001)
BAD_JSON_ERRORS = [
    {"row": 2, "line": 3, "error": "content must not be empty"},
    {"row": 3, "line": 4, "error": "content must be at most 1000 characters"},
    {"row": 5, "line": 6, "error": "is_finished must be true or false"},
    {"row": 6, "line": 7, "error": "unknown field 'owner'; allowed: content, created_at,"
                                   " finished_at, id, is_finished, updated_at"},
    {"row": 7, "line": 8, "error": "the row is not a JSON object"},
    {"row": 8, "line": 9, "error": "content must be a string"},
    {"row": 9, "line": 10, "error": "content is required"},
]
BAD_JSON_GOOD = ["first", "finished", "from an export", "$ne"]

BAD_CSV = (
    b'content,is_finished\r\n'
    b'one,false\r\n'
    b'"two\r\nlines, and a ""quote""",true\r\n'
    b',false\r\n'
    b'three,maybe\r\n'
    b'\r\n'
    b'four,1,extra\r\n'
    b'"five\nsix",0\r\n'
    b'seven,\r\n'
)
BAD_CSV_ERRORS = [
    {"row": 3, "line": 5, "error": "content must not be empty"},
    {"row": 4, "line": 6, "error": "is_finished must be true or false"},
    {"row": 5, "line": 8, "error": "the row has 3 fields; the header has 2"},
]
BAD_CSV_GOOD = ["one", 'two\r\nlines, and a "quote"', "five\nsix", "seven"]

BAD_JSON_LINES = (
    b'{"content": "alpha"}\n'
    b'{"content": "beta", \n'
    b'\n'
    b'{"content": "gamma", "is_finished": true}\n'
    b'"just a string"\n'
)
BAD_JSON_LINES_ERRORS = [
    {"row": 2, "line": 2, "error": "not valid JSON: Expecting property name enclosed in double"
                                   " quotes at column 21"},
    {"row": 4, "line": 5, "error": "the row is not a JSON object"},
]


@pytest.mark.parametrize(
    ("data", "filename", "errors", "good"),
    [
        (BAD_JSON, "todos.json", BAD_JSON_ERRORS, BAD_JSON_GOOD),
        (BAD_CSV, "todos.csv", BAD_CSV_ERRORS, BAD_CSV_GOOD),
        (BAD_JSON_LINES, "todos.jsonl", BAD_JSON_LINES_ERRORS, ["alpha", "gamma"]),
    ],
    ids=["json", "csv", "json-lines"],
)
@pytest.mark.gen_test(timeout=120)
async def test_bad_rows_are_reported_by_line_and_good_rows_imported(
    api, services, worker, data, filename, errors, good
):
    token = await api.register("alice")
    await api.post("/todo", token=token, json_body={"content": "from before"})
    cached = await api.get("/todo", token=token)
    assert [t["content"] for t in cached.json["data"]] == ["from before"]
    page_key = f"{services.settings.redis_prefix}page:{await user_id(services, 'alice')}"
    assert await services.redis.client.exists(page_key) == 1  # the first page is cached
    worker.start()
    queued = await start_import(api, token, data, filename=filename, file_type=None)
    done = await wait_for_job(api, token, queued["id"])
    assert done["status"] == jobs.DONE, (done, worker.log())
    assert_matches(SPEC, "Job", done)
    assert done["result"] == {"imported": len(good), "duplicates": 0, "rejected": len(errors),
                              "errors": errors}
    assert done["progress"] == {"done": len(good), "total": len(good)}
    # (f) The cached first page shows the import as soon as the job is done; file order.
    first_page = (await api.get("/todo", token=token)).json["data"]
    assert [t["content"] for t in first_page] == [*good, "from before"]
    listed = await all_pages(api, token)
    assert listed == first_page
    finished = {t["content"]: t["is_finished"] for t in listed}
    assert finished.get("finished", True)
    assert finished.get("gamma", True)
    assert not finished.get("from an export", False)

    # Every rejected row is in the downloadable report.
    assert done["result_url"] == f"/jobs/{queued['id']}/result"
    report = await api.get(done["result_url"], token=token)
    assert report.status == 200
    assert report.headers["Content-Type"].startswith("text/csv")
    assert report.headers["Content-Disposition"] == (
        f'attachment; filename="import-errors-{queued["id"]}.csv"'
    )
    rows = list(csv.DictReader(io.StringIO(report.body.decode("utf-8"), newline="")))
    assert [{"row": int(r["row"]), "line": int(r["line"]), "error": r["error"]}
            for r in rows] == errors
    await eventually_no_uploads(services)


@pytest.mark.gen_test(timeout=120)
async def test_rows_sharing_a_line_are_each_imported_once(api, services, worker):
    """Minified JSON: every row on line 1. A row is known by its place in the file."""
    token = await api.register("alice")
    data = json.dumps([{"content": f"todo {i}"} for i in range(1500)] + [{}]).encode()
    worker.start()
    for expected in ({"imported": 1500, "duplicates": 0}, {"imported": 0, "duplicates": 1500}):
        done = await wait_for_job(api, token, (await start_import(
            api, token, data, filename="min.json", file_type=None))["id"])
        assert done["status"] == jobs.DONE, (done, worker.log())
        assert done["result"] == {**expected, "rejected": 1, "errors": [
            {"row": 1501, "line": 1, "error": "content is required"}]}
    owner = await user_id(services, "alice")
    assert await services.db["todos"].count_documents({"owner": owner}) == 1500


@pytest.mark.gen_test(timeout=120)
async def test_more_errors_than_listed_are_all_in_the_report(api, worker):
    token = await api.register("alice")
    count = 2 * importing.MAX_LISTED_ERRORS + 10
    rows = [["" if i % 2 else f"row {i}", "false"] for i in range(count)]
    worker.start()
    queued = await start_import(api, token, csv_file(rows))
    done = await wait_for_job(api, token, queued["id"])
    result = done["result"]
    assert (result["imported"], result["rejected"]) == (importing.MAX_LISTED_ERRORS + 5,
                                                        importing.MAX_LISTED_ERRORS + 5)
    assert len(result["errors"]) == importing.MAX_LISTED_ERRORS
    assert result["errors"][0] == {"row": 2, "line": 3, "error": "content must not be empty"}
    report = (await api.get(done["result_url"], token=token)).body.decode().splitlines()
    assert len(report) == 1 + importing.MAX_LISTED_ERRORS + 5
    assert report[-1] == f"{len(rows)},{len(rows) + 1},content must not be empty"


@pytest.mark.gen_test(timeout=120)
async def test_a_report_is_deleted_after_its_keeping_time_and_then_gone(api, services, worker):
    token = await api.register("alice")
    worker.start()
    done = await wait_for_job(api, token, (await start_import(
        api, token, csv_file([["kept", "false"], ["", "false"]])))["id"])
    clean = await wait_for_job(api, token, (await start_import(
        api, token, csv_file([["no errors", "false"]])))["id"])
    assert (done["result"]["rejected"], clean["result"]["rejected"]) == (1, 0), worker.log()
    record = await services.db["jobs"].find_one({"_id": ObjectId(done["id"])})
    report_id = record[jobs.EXPORT_FILE]
    assert await services.db["exports.files"].count_documents({"_id": report_id}) == 1
    long_ago = jobs.utc_now() - timedelta(days=jobs.FILE_KEEP_DAYS, hours=1)
    await services.db["jobs"].update_many({}, {"$set": {"finished_at": long_ago}})
    with MongoClient(services.settings.mongo_uri, tz_aware=True) as mongo:
        assert sweeper.expire_files(mongo[services.settings.db_name]["jobs"]) == 1
    expired = (await api.get(f"/jobs/{done['id']}", token=token)).json
    assert (expired["result_url"], expired["result"]["expired"]) == (None, True)
    assert error_of(await api.get(done["result_url"], token=token)) == (410, jobs.EXPIRED)
    assert await services.db["exports.files"].count_documents({"_id": report_id}) == 0
    assert await services.db["exports.chunks"].count_documents({"files_id": report_id}) == 0
    # The todos it imported stay.
    assert [t["content"] for t in (await api.get("/todo", token=token)).json["data"]] == [
        "no errors", "kept"
    ]


# -- (c) the same file twice ------------------------------------------------------------------
@pytest.mark.gen_test(timeout=120)
async def test_the_same_file_imported_twice_creates_each_todo_once(api, services, worker):
    token = await api.register("alice")
    data = csv_file([[f"todo {i}", "false"] for i in range(2500)] + [["", "false"]])
    worker.start()
    first = await wait_for_job(api, token, (await start_import(api, token, data))["id"])
    assert first["result"] | {"errors": []} == {"imported": 2500, "duplicates": 0,
                                               "rejected": 1, "errors": []}, worker.log()
    second = await wait_for_job(api, token, (await start_import(api, token, data))["id"])
    assert second["status"] == jobs.DONE
    assert second["result"] | {"errors": []} == {"imported": 0, "duplicates": 2500,
                                                "rejected": 1, "errors": []}
    assert second["progress"] == {"done": 2500, "total": 2500}
    owner = await user_id(services, "alice")
    assert await services.db["todos"].count_documents({"owner": owner}) == 2500
    assert len(await services.db["todos"].distinct("content", {"owner": owner})) == 2500
    # Another user importing the same file gets every row.
    bob = await api.register("bob")
    theirs = await wait_for_job(api, bob, (await start_import(api, bob, data))["id"])
    assert theirs["result"]["imported"] == 2500
    # An edited file is another file: a row's key is (the file's sha256, its line).
    edited = data.replace(b"todo 0,", b"todo zero,")
    third = await wait_for_job(api, token, (await start_import(api, token, edited))["id"])
    assert third["result"]["imported"] == 2500
    await eventually_no_uploads(services)


# -- (d) a redelivered import ---------------------------------------------------------------------
FIRST_TRY = SimpleNamespace(request=SimpleNamespace(retries=0), max_retries=5)  # a Celery task


@pytest.fixture
def worker_clients(settings) -> Iterator[WorkerClients]:
    clients = WorkerClients(settings)
    yield clients
    clients.close()


@pytest.mark.gen_test(timeout=120)
async def test_an_import_run_again_from_any_point_imports_each_row_once(
    api, services, worker_clients
):
    """The worker died half-way (here: in the middle of pass 2) and the job is delivered again:
    the second run skips what the first inserted and still counts those rows as imported."""
    token = await api.register("alice")
    count = 3 * importing.BATCH + 17
    data = csv_file([[f"todo {i}", "false"] for i in range(count)])
    queued = await start_import(api, token, data)  # no worker: it stays queued
    job_id = ObjectId(queued["id"])

    class WorkerDied(BaseException):
        pass

    def die_after_two_batches(done, total):
        if done >= 2 * importing.BATCH:
            raise WorkerDied

    records = worker_clients.db["jobs"]
    job = await asyncio.to_thread(job_records.mark_running, records, job_id, attempt=ObjectId())
    with pytest.raises(WorkerDied):
        await asyncio.to_thread(
            importing.run, worker_clients.db, job, upload_id=job[jobs.IMPORT_FILE],
            report_id=ObjectId(), progress=die_after_two_batches,
        )
    owner = await user_id(services, "alice")
    assert await services.db["todos"].count_documents({"owner": owner}) == 2 * importing.BATCH

    # Its lease runs out; the sweeper queues it again, and a worker takes it.
    await services.db["jobs"].update_one(
        {"_id": job_id}, {"$set": {"lease_until": jobs.utc_now() - timedelta(seconds=1)}})
    requeued = await asyncio.to_thread(job_records.requeue_interrupted, records)
    assert (requeued["_id"], requeued["status"]) == (job_id, jobs.QUEUED)
    result = await asyncio.to_thread(tasks.run_job, FIRST_TRY, worker_clients, str(job_id),
                                     tasks.import_todos)
    assert result == {"imported": count, "duplicates": 0, "rejected": 0, "errors": []}
    contents = await services.db["todos"].distinct("content", {"owner": owner})
    assert await services.db["todos"].count_documents({"owner": owner}) == count
    assert len(contents) == count
    done = (await api.get(f"/jobs/{job_id}", token=token)).json
    assert (done["status"], done["progress"]) == (jobs.DONE, {"done": count, "total": count})
    listed = (await api.get("/todo?limit=3", token=token)).json["data"]
    assert [t["content"] for t in listed] == ["todo 0", "todo 1", "todo 2"]

    # Delivered once more after it finished: nothing happens, and the upload goes.
    assert await asyncio.to_thread(tasks.run_job, FIRST_TRY, worker_clients, str(job_id),
                                   tasks.import_todos) == {}
    assert await stored_uploads(services) != (0, 0)
    await asyncio.to_thread(tasks.drop_finished_upload, worker_clients, str(job_id))
    assert await stored_uploads(services) == (0, 0)
    assert await services.db["todos"].count_documents({"owner": owner}) == count


# -- (e) bad uploads ---------------------------------------------------------------------------
async def assert_nothing_queued(api, services, token):
    assert (await api.get("/jobs", token=token)).json == {"data": []}
    assert await stored_uploads(services) == (0, 0)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (form(b"content\nx\n", fields={}), "type must be import"),
        (form(b"content\nx\n", fields={"type": "purge"}), "type must be import"),
        (form(b"content\nx\n", fields={"type": "export", "format": "csv"}),
         "type must be import"),
        (form(None), "the file is missing: send it in a part named 'file'"),
        (form(b""), "the file is empty"),
        (form(b"content\nx\n", fields={"type": "import", "format": "xml"}),
         "format must be one of: json, csv"),
        (form(b"content\nx\n", filename="todos.txt", file_type="text/plain"),
         "cannot tell the file's format"),
        (form(b"content\nx\n", filename="todos", file_type=None),
         "cannot tell the file's format"),
        (form(b"content\nx\n", fields={"type": "import", "owner": "x"}),
         "unknown field 'owner'; allowed: file, format, type"),
        (form(b"content\nx\n", fields={"type": "import", "format": "x" * 2000}),
         "field 'format' is longer than 1024 bytes"),
        (form(b"content\nx\n")[:-20], "the multipart/form-data body ends before its closing"),
        (b"this is not multipart at all", "malformed multipart/form-data body: Expected"),
        (form(b"content\nx\n").replace(b'form-data; name="file"', b'attachment', 1),
         "each part needs a Content-Disposition: form-data with a name"),
    ],
)
@pytest.mark.gen_test
async def test_bad_uploads_are_400_and_leave_nothing(api, services, body, message):
    token = await api.register("alice")
    reply = await api.post("/jobs", token=token, body=body, headers=MULTIPART)
    status, said = error_of(reply)
    assert (status, said[: len(message)]) == (400, message), said
    await assert_nothing_queued(api, services, token)


@pytest.mark.gen_test
async def test_a_repeated_file_or_field_is_400(api, services):
    token = await api.register("alice")
    twice = form(b"content\nx\n").replace(f"--{BOUNDARY}--".encode(), b"")
    twice += form(b"content\ny\n", fields={})
    status, said = error_of(await api.post("/jobs", token=token, body=twice, headers=MULTIPART))
    assert (status, said) == (400, "field 'file' must be given once")
    await assert_nothing_queued(api, services, token)


@pytest.mark.gen_test
async def test_multipart_without_a_boundary_is_400(api, services):
    token = await api.register("alice")
    reply = await api.post("/jobs", token=token, body=form(b"content\nx\n"),
                           headers={"Content-Type": "multipart/form-data"})
    assert error_of(reply) == (400, "a multipart/form-data body needs a boundary in its"
                                    " Content-Type")
    await assert_nothing_queued(api, services, token)


@pytest.mark.gen_test
async def test_other_content_types_keep_the_json_rules_and_64_kib(api, services):
    token = await api.register("alice")
    big = json.dumps({"type": "purge", "older_than_days": 1}).encode() + b" " * 70_000
    reply = await api.post("/jobs", token=token, body=big,
                           headers={"Content-Type": "application/json"})
    assert error_of(reply) == (413, "request body is larger than 65536 bytes")
    reply = await api.post("/jobs", token=token, body=b"x" * 70_000,
                           headers={"Content-Type": "text/csv"})
    assert error_of(reply) == (413, "request body is larger than 65536 bytes")
    reply = await api.post("/jobs", token=token, body=b"content\nx\n",
                           headers={"Content-Type": "text/csv"})
    assert error_of(reply) == (415, "Content-Type must be application/json")
    reply = await api.post("/jobs", token=token, json_body={"type": "import"})
    assert error_of(reply)[1].endswith("(an import is uploaded as multipart/form-data, with a"
                                       " file part)")
    await assert_nothing_queued(api, services, token)


@pytest.mark.gen_test
async def test_an_upload_needs_a_token_before_its_body_is_read(api, services):
    reply = await api.post("/jobs", body=form(b"content\nx\n"), headers=MULTIPART)
    assert error_of(reply)[0] == 401
    assert await stored_uploads(services) == (0, 0)


@pytest.mark.gen_test(timeout=60)
async def test_over_the_upload_limit_is_a_json_413_with_or_without_content_length(
    services, worker
):
    small = dataclasses.replace(services.settings, max_upload_size=16 * 1024)
    limit_message = import_form.too_large_message(16 * 1024)
    async with another_instance(small) as api:
        token = await api.register("alice")
        # Just at the limit: accepted.
        at_limit = csv_file([["x" * 990, "false"]] * 17)[: 16 * 1024]
        at_limit = at_limit[: at_limit.rindex(b"\r\n") + 2]
        assert (await upload(api, token, at_limit)).status == 202
        assert len((await api.get("/jobs", token=token)).json["data"]) == 1
        # Declared too large (the whole body): refused before the body is read.
        over = csv_file([["x" * 990, "false"]] * 100)
        reply = await upload(api, token, over)
        assert error_of(reply) == (413, limit_message)
        # The file over its limit, the body under its own: refused as the file streams in.
        reply = await upload(api, token, csv_file([["x" * 990, "false"]] * 17))
        assert error_of(reply) == (413, limit_message)

        # Chunked: no length to check up front; refused once the file passes the limit.
        async def produce(write):
            body = form(over)
            for start in range(0, len(body), 4096):
                await write(body[start:start + 4096])

        response = await api.client.fetch(
            f"{api.base_url}/jobs", method="POST", body_producer=produce, raise_error=False,
            headers={"Authorization": f"Bearer {token}", **MULTIPART}, request_timeout=20,
        )
        assert response.code == 413, response.body
        assert json.loads(response.body)["error"] == {"status": 413, "message": limit_message}
        # Only the accepted upload is stored.
        assert await services.db["imports.files"].count_documents({}) == 1
        assert await services.db["imports.chunks"].count_documents({}) == 1
        assert len((await api.get("/jobs", token=token)).json["data"]) == 1


@pytest.mark.gen_test(timeout=60)
async def test_a_client_that_goes_away_mid_upload_leaves_nothing(api, services, http_port):
    token = await api.register("alice")
    body = form(b"content\n" + b"a todo\n" * 200_000)
    head = (f"POST /jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n"
            f"Content-Type: {MULTIPART['Content-Type']}\r\nContent-Length: {len(body)}\r\n\r\n")
    _reader, writer = await asyncio.open_connection("127.0.0.1", http_port)
    writer.write(head.encode() + body[: len(body) // 2])
    await writer.drain()
    deadline = time.monotonic() + 10
    while (await stored_uploads(services))[1] < 2:  # some GridFS chunks are written
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    writer.transport.abort()
    await eventually_no_uploads(services)
    assert (await api.get("/jobs", token=token)).json == {"data": []}


# -- the job itself fails ---------------------------------------------------------------------
@pytest.mark.parametrize(
    ("data", "filename", "error"),
    [
        (b"content\n" + b"x\n" * (importing.MAX_IMPORT_ROWS + 1), "big.csv",
         "the file has more than 100000 rows; split it into smaller files"),
        (b'"content"', "string.json",
         "a JSON import must be an array of objects, or one object per line (JSON Lines)"),
        (b'[{"content": "a"},\n {"content": "b"]', "broken.json",
         "the file is not valid JSON at line 2: Expecting ',' delimiter"),
        (b'[{"content": "a"}', "open.json", "the file is not valid JSON: the array is not closed"),
        (b"todo\nx\n", "noheader.csv",
         "the CSV file's first row must be a header naming a content column"),
        (b"content,owner\nx,y\n", "owner.csv", "unknown column 'owner' in the CSV header"),
        (b"content\n\xff\xfe\n", "latin.csv", "the file is not valid UTF-8 (near byte 8)"),
        (b'content\nfine\n"never closed\nstill open\n', "quote.csv",
         "the CSV record at line 3 is malformed: unexpected end of data"),
    ],
)
@pytest.mark.gen_test(timeout=120)
async def test_a_file_that_cannot_be_imported_fails_the_job_and_imports_nothing(
    api, services, worker, data, filename, error
):
    token = await api.register("alice")
    worker.start()
    queued = await start_import(api, token, data, filename=filename, file_type=None)
    done = await wait_for_job(api, token, queued["id"])
    owner = await user_id(services, "alice")
    assert done["status"] == jobs.FAILED, (done, worker.log())
    assert done["error"].startswith(error), done["error"]
    assert (done["result"], done["result_url"]) == (None, None)
    assert await services.db["todos"].count_documents({"owner": owner}) == 0
    assert await services.db["exports.files"].count_documents({}) == 0
    await eventually_no_uploads(services)


@pytest.mark.gen_test(timeout=60)
async def test_another_users_import_is_404_and_its_report_too(api, worker):
    alice = await api.register("alice")
    bob = await api.register("bob")
    worker.start()
    queued = await start_import(api, alice, csv_file([["", "false"]]))
    assert error_of(await api.get(f"/jobs/{queued['id']}", token=bob)) == (404, "job not found")
    done = await wait_for_job(api, alice, queued["id"])
    assert done["result"]["rejected"] == 1
    assert error_of(await api.get(done["result_url"], token=bob)) == (404, "job not found")
    assert (await api.get(done["result_url"], token=alice)).status == 200
    clean = await wait_for_job(
        api, alice, (await start_import(api, alice, csv_file([["fine", "true"]])))["id"])
    assert clean["result_url"] is None
    assert error_of(await api.get(f"/jobs/{clean['id']}/result", token=alice)) == (
        409, jobs.NO_REPORT)


@pytest.mark.gen_test(timeout=60)
async def test_an_import_whose_queue_is_down_keeps_no_file(mongo_uri, redis_url):
    from scripts.local_services import free_port

    settings = make_settings(mongo_uri, redis_url,
                             broker_url=f"redis://127.0.0.1:{free_port()}/1")
    async with another_instance(settings) as api:
        token = await api.register("alice")
        reply = await upload(api, token, csv_file([["a", "false"]]))
        assert error_of(reply) == (503, jobs.QUEUE_UNAVAILABLE)
    with MongoClient(mongo_uri) as mongo:
        try:
            db = mongo[settings.db_name]
            assert db["imports.files"].count_documents({}) == 0
            assert db["imports.chunks"].count_documents({}) == 0
            assert db["jobs"].find_one()["status"] == jobs.FAILED
        finally:
            mongo.drop_database(settings.db_name)


def test_import_keys_never_look_like_a_client_idempotency_key():
    from server.domain.validation import IDEMPOTENCY_KEY_PATTERN

    key = importing.import_key("ab" * 32, 7)  # the 7th row
    assert not IDEMPOTENCY_KEY_PATTERN.fullmatch(key)
    assert key == f"import\t{'ab' * 32}\t7"


def test_every_way_a_file_is_cut_into_chunks_reads_the_same_rows():
    """A boundary may fall anywhere: inside a number, a string, an escape, a CRLF, a UTF-8
    character."""
    samples = [
        ("json", BAD_JSON.replace(b'"first"', '"ﬁrst ✓ \\u00e9"'.encode())),
        ("csv", BAD_CSV.replace(b"one", "öne".encode())),
        ("json", BAD_JSON_LINES),
    ]
    for fmt, data in samples:
        whole = [(r.line, r.todo, r.error) for r in import_formats.rows(fmt, [data])]
        for size in range(1, 24):
            pieces = [data[i:i + size] for i in range(0, len(data), size)]
            assert [(r.line, r.todo, r.error) for r in import_formats.rows(fmt, pieces)] == whole


def test_a_multipart_boundary_split_anywhere_is_parsed_the_same(io_loop, services):
    """The streaming parser gets the body in pieces of every size."""
    data = csv_file([[f"todo {i}", "false"] for i in range(50)])
    body = form(data, fields={"format": "csv", "type": "import"})

    async def parse(size):
        upload = uploads.ImportUpload(services.db, owner=ObjectId(),
                                      content_type=MULTIPART["Content-Type"],
                                      max_file_size=MAX_UPLOAD)
        for start in range(0, len(body), size):
            await upload.feed(body[start:start + size])
        done = await upload.finish()
        await upload.discard(force=True)
        return done.params

    results = [io_loop.run_sync(lambda size=size: parse(size)) for size in (1, 2, 3, 7, 64, 4096)]
    assert all(r == results[0] for r in results)
    assert results[0]["size"] == len(data)
    assert results[0]["format"] == "csv"


@pytest.mark.parametrize(
    ("fmt", "data", "error"),
    [
        ("csv", b"content\n" + b"x" * (import_formats.MAX_ROW_CHARS + 10),
         f"line 2 is longer than {import_formats.MAX_ROW_CHARS} characters"),
        ("csv", b"content,content\nx,y\n", "column 'content' appears twice in the CSV header"),
        ("json", b" \n\t", "the file holds no JSON, only white space"),
        ("json", b'[{"content": "a"}]\n\n[]', "the file is not valid JSON at line 3: unexpected"
                                            " data after the array"),
        ("json", b'[{"content": "a"} {"content": "b"}]',
         "the file is not valid JSON at line 1: expected ',' or ']'"),
        ("json", b"[" + b"[" * 100_000 + b"]" * 100_000 + b"]",
         "the JSON element at line 1 is nested too deeply"),
        ("json", b'[\n{"content": "' + b"x" * (import_formats.MAX_ROW_CHARS + 10),
         "the file is not valid JSON at line 2: Unterminated string starting at"),
    ],
)
def test_files_that_cannot_be_read_say_why(fmt, data, error):
    # Earlier tests' garbage collected at the bottom of the nested case's recursion could run
    # a finalizer whose warning cannot even be formatted there (pytest then fails the test).
    gc.collect()
    pieces = [data[i:i + 65536] for i in range(0, len(data), 65536)]
    with pytest.raises(import_formats.ImportFileError) as raised:
        list(import_formats.rows(fmt, pieces))
    assert str(raised.value) == error


def test_json_lines_rows_that_are_too_deep_or_empty_are_rejected_rows():
    gc.collect()  # as above
    data = b'{"content": "a"}\n' + b"[" * 100_000 + b"]" * 100_000 + b'\n[]\n{"content": "b"}'
    found = [(r.number, r.line, r.error) for r in import_formats.rows("json", [data])]
    assert found == [(1, 1, None), (2, 2, "not valid JSON: nested too deeply"),
                     (3, 3, "the row is not a JSON object"), (4, 4, None)]


@pytest.mark.gen_test(timeout=60)
async def test_a_row_inserted_between_look_up_and_insert_is_a_duplicate(services):
    """What a concurrent import of the same file does: the unique index refuses the second."""
    owner = ObjectId()
    rows = [import_formats.Row(1, validation.TodoImport("same"), None, 1)] * 2
    older = jobs.utc_now() - timedelta(seconds=1)
    batch = [importing._document(owner, row, "ab" * 32, moment)
             for row, moment in zip(rows, [older, jobs.utc_now()], strict=True)]
    with MongoClient(services.settings.mongo_uri, tz_aware=True) as mongo:
        todos = mongo[services.settings.db_name]["todos"]
        assert await asyncio.to_thread(importing._insert, todos, owner, batch) == (1, 1)
        assert todos.count_documents({"owner": owner}) == 1


@pytest.mark.gen_test(timeout=60)
async def test_a_damaged_upload_fails_the_job(api, services, worker_clients):
    token = await api.register("alice")
    queued = await start_import(api, token, csv_file([["a", "false"]]))
    await services.db["jobs"].update_one({"_id": ObjectId(queued["id"])},
                                         {"$set": {"params.sha256": "0" * 64}})
    result = await asyncio.to_thread(tasks.run_job, FIRST_TRY, worker_clients, queued["id"],
                                     tasks.import_todos)
    assert result["error"].startswith("the uploaded file is damaged")
    failed = (await api.get(f"/jobs/{queued['id']}", token=token)).json
    assert (failed["status"], failed["result"]) == (jobs.FAILED, None)
    assert await services.db["todos"].count_documents({}) == 0
    await asyncio.to_thread(tasks.drop_finished_upload, worker_clients, queued["id"])
    assert await stored_uploads(services) == (0, 0)


@pytest.mark.gen_test(timeout=60)
async def test_an_import_the_sweeper_gives_up_keeps_no_upload(api, services, worker_clients):
    """Its worker died once too often: the job fails, and no attempt will read the file."""
    from server.worker import sweeper

    token = await api.register("alice")
    queued = await start_import(api, token, csv_file([["a", "false"]]))
    await services.db["jobs"].update_one({"_id": ObjectId(queued["id"])}, {"$set": {
        "status": jobs.RUNNING, "attempt": ObjectId(),
        "lease_until": jobs.utc_now() - timedelta(seconds=1),
        "interruptions": job_records.MAX_INTERRUPTIONS - 1,
    }})
    assert await stored_uploads(services) != (0, 0)
    claimed = await asyncio.to_thread(sweeper.sweep, None, worker_clients.db["jobs"])
    assert [(str(j["_id"]), j["status"]) for j in claimed] == [(queued["id"], jobs.FAILED)]
    assert await stored_uploads(services) == (0, 0)
