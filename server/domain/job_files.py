"""A finished job's file, read back for download: an export (JSON or CSV of the owner's
todos) or an import's report of its rejected rows, both in GridFS (bucket `exports`).

Workers write these files (server/worker/exporting.py, server/worker/importing.py); a web
instance opens them here with pymongo's asynchronous GridFS and sends them a chunk at a time,
never holding a whole file.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from bson import ObjectId
from gridfs import AsyncGridFSBucket
from gridfs.asynchronous.grid_file import AsyncGridOut
from pymongo.asynchronous.database import AsyncDatabase

BUCKET = "exports"
CONTENT_TYPES = {"json": "application/json; charset=utf-8", "csv": "text/csv; charset=utf-8"}


def filename(job_id: ObjectId, fmt: str) -> str:
    return f"todos-{job_id}.{fmt}"


def report_filename(job_id: ObjectId) -> str:
    """An import's report of the rows it rejected (CSV `line,error`), kept in this bucket too."""
    return f"import-errors-{job_id}.csv"


@dataclass
class ExportFile:
    """An export ready to send: its headers and a chunk-by-chunk reader."""

    stream: AsyncGridOut
    content_type: str
    filename: str

    async def chunks(self) -> AsyncIterator[bytes]:
        try:
            while chunk := await self.stream.readchunk():
                yield chunk
        finally:
            await self.stream.close()


async def open_export(
    db: AsyncDatabase[dict[str, Any]], *, file_id: ObjectId, job_id: ObjectId, fmt: str
) -> ExportFile:
    stream = await AsyncGridFSBucket(db, bucket_name=BUCKET).open_download_stream(file_id)
    return ExportFile(stream, CONTENT_TYPES[fmt], filename(job_id, fmt))


async def open_report(
    db: AsyncDatabase[dict[str, Any]], *, file_id: ObjectId, job_id: ObjectId
) -> ExportFile:
    stream = await AsyncGridFSBucket(db, bucket_name=BUCKET).open_download_stream(file_id)
    return ExportFile(stream, CONTENT_TYPES["csv"], report_filename(job_id))
