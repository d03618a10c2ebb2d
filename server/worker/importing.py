"""Import files, on the worker's side: an uploaded JSON or CSV file read back from GridFS
(bucket `imports`), parsed and validated a row at a time, and inserted in batches.

Two passes, both streaming (no more than a GridFS chunk and one row at a time in memory):
1. every row is parsed and validated with the rules of POST /todo; rows are counted and the
   rejected ones written, as `line,error`, to a report in GridFS (bucket `exports`). A file
   that cannot be read at all, or holds too many rows, fails the job before anything is
   imported (`ImportFileError`).
2. the good rows are inserted in batches, each under a key made of the file's sha256 and the
   row's line, on the unique (owner, idempotency_key) index: a row already there (the same file
   imported before, or an earlier attempt of this job that a dead worker left half done) is
   skipped by MongoDB, so every row exists once, however often the job runs.

Synchronous: it runs in a Celery worker, with pymongo's synchronous client. The file's rows
come from server/worker/import_formats.py.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from bson import ObjectId
from gridfs import GridFSBucket, NoFile
from gridfs.synchronous.grid_file import GridIn
from pymongo.collection import Collection
from pymongo.database import Database
from pymongo.errors import BulkWriteError

from server.domain import job_files
from server.domain.todos import IDEMPOTENCY_KEY, new_todo
from server.domain.upload_files import BUCKET
from server.worker.import_formats import ImportFileError, Row, rows

MAX_IMPORT_ROWS = 100_000
# Rows per insert_many; progress is recorded after each.
BATCH = 1000
# Rejected rows listed in the job's result (every one of them is in the downloadable report):
# GET /jobs shows 20 jobs with their results, which must stay small.
MAX_LISTED_ERRORS = 100
DUPLICATE_KEY = 11000
REPORT_HEADER = ("row", "line", "error")


def import_key(sha256: str, number: int) -> str:
    """The key a row is inserted under: the file's and the row's place in it (not its line:
    a JSON line may hold many rows). A tab is not printable ASCII, which every client
    Idempotency-Key is: the two kinds of key never meet."""
    return f"import\t{sha256}\t{number}"



def _chunks(db: Database[dict[str, Any]], file_id: ObjectId) -> Iterator[bytes]:
    try:
        stream = GridFSBucket(db, bucket_name=BUCKET).open_download_stream(file_id)
    except NoFile:
        raise ImportFileError("the uploaded file is gone; upload it again") from None
    with stream:
        while chunk := stream.readchunk():
            yield chunk


def discard_upload(db: Database[dict[str, Any]], file_id: ObjectId) -> None:
    with contextlib.suppress(NoFile):
        GridFSBucket(db, bucket_name=BUCKET).delete(file_id)


class _Report:
    """The rejected rows as CSV `line,error`, written to GridFS a thousand rows at a time."""

    def __init__(self, db: Database[dict[str, Any]], file_id: ObjectId,
                 job: dict[str, Any]) -> None:
        bucket = GridFSBucket(db, bucket_name=job_files.BUCKET)
        self.stream: GridIn = bucket.open_upload_stream_with_id(
            file_id, job_files.report_filename(job["_id"]),
            metadata={"job": job["_id"], "owner": job["owner"], "format": "csv"},
        )
        self.buffer = io.StringIO()
        self.writer = csv.writer(self.buffer, lineterminator="\r\n")
        self.writer.writerow(REPORT_HEADER)
        self.rows = 0

    def add(self, row: Row) -> None:
        self.writer.writerow((row.number, row.line, row.error))
        self.rows += 1
        if self.rows % BATCH == 0:
            self._flush()

    def _flush(self) -> None:
        self.stream.write(self.buffer.getvalue().encode("utf-8"))
        self.buffer.seek(0)
        self.buffer.truncate()

    def close(self) -> None:
        self._flush()
        self.stream.close()


@dataclass
class Checked:
    good: int = 0
    rejected: int = 0
    errors: list[dict[str, Any]] = field(default_factory=list)


def check(db: Database[dict[str, Any]], job: dict[str, Any], *, upload_id: ObjectId,
          report_id: ObjectId) -> Checked:
    """Pass 1: parse and validate every row; the rejected ones go to the report `report_id`
    (deleted again when there are none)."""
    params = job["params"]
    digest = hashlib.sha256()
    report = _Report(db, report_id, job)
    checked = Checked()
    try:
        found = rows(params["format"], _chunks(db, upload_id), digest)
        for count, row in enumerate(found, start=1):
            if count > MAX_IMPORT_ROWS:
                raise ImportFileError(f"the file has more than {MAX_IMPORT_ROWS} rows; split it"
                                      " into smaller files")
            if row.error is None:
                checked.good += 1
                continue
            checked.rejected += 1
            report.add(row)
            if len(checked.errors) < MAX_LISTED_ERRORS:
                checked.errors.append({"row": row.number, "line": row.line,
                                       "error": row.error})
        if digest.hexdigest() != params["sha256"]:
            raise ImportFileError("the uploaded file is damaged (its sha256 differs from the"
                                  " upload's); upload it again")
    except BaseException:
        report.stream.abort()
        raise
    if checked.rejected:
        report.close()
    else:
        report.stream.abort()
    return checked


def _document(owner: ObjectId, row: Row, sha256: str, created_at: datetime) -> dict[str, Any]:
    assert row.todo is not None
    doc = new_todo(owner, row.todo.content, import_key(sha256, row.number))
    doc["created_at"] = created_at
    if row.todo.is_finished:
        doc.update(is_finished=True, finished_at=created_at)
    return doc


def _insert(todos: Collection[dict[str, Any]], owner: ObjectId,
            batch: list[dict[str, Any]]) -> tuple[int, int]:
    """Insert the rows of a batch not there yet; (rows imported, rows that were there)."""
    expected = {doc[IDEMPOTENCY_KEY]: doc["created_at"] for doc in batch}
    existing = _existing(todos, owner, list(expected))
    fresh = [doc for doc in batch if doc[IDEMPOTENCY_KEY] not in existing]
    inserted = len(fresh)
    if fresh:
        try:
            todos.insert_many(fresh, ordered=False)
        except BulkWriteError as exc:
            # Inserted since the look-up, by another import of the same file running now.
            errors = exc.details["writeErrors"]
            if any(error["code"] != DUPLICATE_KEY for error in errors):
                raise
            inserted = exc.details["nInserted"]
            raced = [fresh[error["index"]][IDEMPOTENCY_KEY] for error in errors]
            existing.update(_existing(todos, owner, raced))
    # Rows with this job's own created_at were inserted by an earlier attempt of this very job
    # (a worker died half-way): imported, not duplicates.
    ours = sum(1 for key, created_at in existing.items() if expected[key] == created_at)
    return inserted + ours, len(existing) - ours


def _existing(todos: Collection[dict[str, Any]], owner: ObjectId,
              keys: list[str]) -> dict[str, datetime]:
    found = todos.find({"owner": owner, IDEMPOTENCY_KEY: {"$in": keys}},
                       {IDEMPOTENCY_KEY: True, "created_at": True})
    return {doc[IDEMPOTENCY_KEY]: doc["created_at"] for doc in found}


def insert(db: Database[dict[str, Any]], job: dict[str, Any], *, upload_id: ObjectId,
           progress: Callable[[int], None]) -> tuple[int, int]:
    """Pass 2: insert the good rows; (imported, duplicates). The first row of the file is the
    newest todo, at the job's creation, each next one a millisecond older: GET /todo lists
    them in the file's order, and an export imported back keeps its order."""
    owner, sha256, newest = job["owner"], job["params"]["sha256"], job["created_at"]
    todos = db["todos"]
    imported = duplicates = done = 0
    batch: list[dict[str, Any]] = []
    good = (row for row in rows(job["params"]["format"], _chunks(db, upload_id))
            if row.todo is not None)
    for row in itertools.chain(good, [None]):
        if row is not None:
            created_at = newest - timedelta(milliseconds=done + len(batch))
            batch.append(_document(owner, row, sha256, created_at))
        if batch and (row is None or len(batch) == BATCH):
            inserted, skipped = _insert(todos, owner, batch)
            imported, duplicates = imported + inserted, duplicates + skipped
            done += len(batch)
            batch = []
            progress(done)
    return imported, duplicates


def run(db: Database[dict[str, Any]], job: dict[str, Any], *, upload_id: ObjectId,
        report_id: ObjectId, progress: Callable[[int, int | None], None]) -> dict[str, Any]:
    """Both passes; the job's result. ImportFileError when the file cannot be imported."""
    checked = check(db, job, upload_id=upload_id, report_id=report_id)
    progress(0, checked.good)
    imported, duplicates = insert(db, job, upload_id=upload_id,
                                  progress=lambda done: progress(done, checked.good))
    return {"imported": imported, "duplicates": duplicates, "rejected": checked.rejected,
            "errors": checked.errors}
