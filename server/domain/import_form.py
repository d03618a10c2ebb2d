"""What an import's multipart/form-data body must hold: its fields, its size limits, and how
the file's format is told (a format field, the part's Content-Type, or the file name).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

from bson import ObjectId

from server.domain.validation import media_type

FILE_FIELD = "file"
TEXT_FIELDS = ("type", "format")
MAX_FIELD_SIZE = 1024
# The whole body may exceed the file's limit by this much: boundaries, part headers, fields.
MULTIPART_OVERHEAD = 64 * 1024
# A chunked body (no Content-Length) over the limit is read this much further, unstored, so
# that its answer is still a JSON 413; past that the connection is dropped.
CHUNKED_SLACK = 1024 * 1024
# How long the whole body may take to arrive (the server's default for other bodies is 30 s):
# 50 MiB at 1 Mbit/s takes about 7 minutes.
BODY_TIMEOUT = 600.0
FORMAT_BY_MEDIA_TYPE = {
    "application/json": "json", "application/x-ndjson": "json", "application/jsonl": "json",
    "text/csv": "csv",
}
FORMAT_BY_EXTENSION = {".json": "json", ".jsonl": "json", ".ndjson": "json", ".csv": "csv"}
UNKNOWN_FORMAT = (
    "cannot tell the file's format: send a format field (json or csv), the file part's"
    " Content-Type (application/json or text/csv) or a file name ending in .json or .csv"
)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def body_limit(max_file_size: int) -> int:
    """The largest multipart body accepted for a file of at most `max_file_size` bytes."""
    return max_file_size + MULTIPART_OVERHEAD


def too_large_message(max_file_size: int) -> str:
    return (f"an import file may be at most {max_file_size} bytes"
            f" (the whole request at most {body_limit(max_file_size)})")


def is_upload(content_type: str | None) -> bool:
    return media_type(content_type) == "multipart/form-data"


@dataclass(frozen=True)
class Upload:
    """A complete, valid upload, its file closed in GridFS."""

    file_id: ObjectId
    filename: str
    format: str
    size: int
    sha256: str

    @property
    def params(self) -> dict[str, Any]:
        return {"format": self.format, "filename": self.filename, "size": self.size,
                "sha256": self.sha256}


@dataclass
class Part:
    name: str = ""
    filename: str = "upload"
    content_type: str | None = None


def safe_filename(raw: bytes | None) -> str:
    """The client's file name without any directory (browsers on Windows send C:\\...),
    control characters or excess length; `upload` when it gives none."""
    name = (raw or b"").decode("utf-8", errors="replace").replace("\\", "/")
    name = _CONTROL.sub("", PurePosixPath(name).name if "/" in name else name).strip()
    return name[:255] or "upload"

