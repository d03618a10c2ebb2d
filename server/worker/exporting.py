"""Export files, on the worker's side: a user's todos written to GridFS (bucket `exports`) in
the job's format, a batch at a time, never the whole list or file in memory.

The worker writes with pymongo's synchronous GridFS; instances read the file back with the
asynchronous one (server/domain/job_files.py).
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
from collections.abc import Callable, Iterable
from typing import Any

from bson import ObjectId
from gridfs import GridFSBucket, NoFile
from pymongo.client_session import ClientSession
from pymongo.collection import Collection
from pymongo.database import Database

from server.domain.job_files import BUCKET, filename
from server.domain.todos import LIST_ORDER, PUBLIC_FIELDS, public_todo

CSV_FIELDS = ("id", "content", "created_at", "is_finished", "finished_at")
# Rows per MongoDB batch and per GridFS write; progress is recorded every PROGRESS_EVERY rows.
BATCH = 1000
PROGRESS_EVERY = 2000


def _csv_row(todo: dict[str, Any]) -> list[str]:
    # The JSON spelling of each value (true/false, empty for null), so both formats agree.
    return [
        todo["id"], todo["content"], todo["created_at"],
        "true" if todo["is_finished"] else "false", todo["finished_at"] or "",
    ]


class _Encoder:
    """Turns public todos into the format's text, a batch at a time."""

    def __init__(self, fmt: str) -> None:
        self.fmt = fmt
        self.buffer = io.StringIO()
        self.first = True
        self.csv = csv.writer(self.buffer, lineterminator="\r\n")

    def start(self) -> None:
        if self.fmt == "csv":
            self.csv.writerow(CSV_FIELDS)
        else:
            self.buffer.write("[")

    def add(self, todo: dict[str, Any]) -> None:
        if self.fmt == "csv":
            self.csv.writerow(_csv_row(todo))
            return
        self.buffer.write(("" if self.first else ",") + json.dumps(todo))
        self.first = False

    def end(self) -> None:
        if self.fmt == "json":
            self.buffer.write("]")

    def take(self) -> bytes:
        data = self.buffer.getvalue().encode("utf-8")
        self.buffer.seek(0)
        self.buffer.truncate()
        return data


def discard(db: Database[dict[str, Any]], file_id: ObjectId) -> None:
    """Delete a file and its chunks; also the chunks of an upload that never closed (no file
    document yet), which is what a worker that died half-way leaves behind."""
    # NoFile: chunks only (deleted all the same), or nothing was written at all.
    with contextlib.suppress(NoFile):
        GridFSBucket(db, bucket_name=BUCKET).delete(file_id)


def write_export(
    db: Database[dict[str, Any]],
    *,
    todos: Collection[dict[str, Any]],
    session: ClientSession | None = None,
    owner: ObjectId,
    job_id: ObjectId,
    fmt: str,
    file_id: ObjectId,
    progress: Callable[[int], None],
) -> int:
    """Stream the owner's todos, newest first, read from `todos` (in `session`), into the
    GridFS file `file_id` of `db`; the rows written.

    `progress(done)` is called every PROGRESS_EVERY rows."""
    bucket = GridFSBucket(db, bucket_name=BUCKET)
    found = todos.find({"owner": owner}, PUBLIC_FIELDS, session=session)
    found = found.sort(LIST_ORDER).batch_size(BATCH)
    encoder = _Encoder(fmt)
    rows = 0
    with bucket.open_upload_stream_with_id(
        file_id, filename(job_id, fmt), metadata={"job": job_id, "owner": owner, "format": fmt}
    ) as stream:
        encoder.start()
        for doc in _closing(found):
            encoder.add(public_todo(doc))
            rows += 1
            if rows % BATCH == 0:
                stream.write(encoder.take())
            if rows % PROGRESS_EVERY == 0:
                progress(rows)
        encoder.end()
        stream.write(encoder.take())
    return rows


def _closing(found: Any) -> Iterable[dict[str, Any]]:
    with found:
        yield from found
