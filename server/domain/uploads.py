"""An import's upload: a multipart/form-data body parsed as it streams in.

The file part goes to GridFS (bucket `imports`) a piece at a time and is hashed (sha256) on the
way; the other parts are two small text fields. The instance never holds the file: at most one
network chunk and one GridFS chunk (255 KiB) are in memory. Every chunk's insert is awaited
before the next network chunk is read, which is the back-pressure on the client. The chunks
are written by server/domain/upload_files.py; the fields and limits of the form are in
server/domain/import_form.py.

A body found bad (malformed, a field missing or unknown, over a limit) is read to its end but
no longer stored: what was written is deleted at once, and the request answers 400 or 413.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from pathlib import PurePosixPath
from typing import Any

from bson import ObjectId
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import PyMongoError
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from server.domain.errors import ApiError, BadRequest, PayloadTooLarge
from server.domain.import_form import (
    FILE_FIELD,
    FORMAT_BY_EXTENSION,
    FORMAT_BY_MEDIA_TYPE,
    MAX_FIELD_SIZE,
    TEXT_FIELDS,
    UNKNOWN_FORMAT,
    Part,
    Upload,
    body_limit,
    safe_filename,
    too_large_message,
)
from server.domain.upload_files import GridFSWriter
from server.domain.validation import IMPORT_FORMATS, media_type

log = logging.getLogger("todo.uploads")


class ImportUpload:
    """Feed it the body's chunks as they arrive, then `finish()` (or `discard()`)."""

    def __init__(
        self, db: AsyncDatabase[dict[str, Any]], *, owner: ObjectId, content_type: str,
        max_file_size: int,
    ) -> None:
        boundary = parse_options_header(content_type)[1].get(b"boundary")
        if not boundary:
            raise BadRequest("a multipart/form-data body needs a boundary in its Content-Type")
        self.owner = owner
        self.max_file_size = max_file_size
        self.max_body_size = body_limit(max_file_size)
        self.file_id = ObjectId()
        self.error: ApiError | None = None
        self.received = 0
        self.size = 0
        self.fields: dict[str, bytearray] = {}
        self._db = db
        self._stream: GridFSWriter | None = None
        self._file: Part | None = None
        self._hash = hashlib.sha256()
        self._pending: list[bytes] = []
        self._part = Part()
        self._headers: dict[str, str] = {}
        self._header_name = bytearray()
        self._header_value = bytearray()
        self._ended = False
        self._kept = False
        self._discarded = False
        # One step at a time: a discard (client gone) waits for the write in progress.
        self._lock = asyncio.Lock()
        self._parser = MultipartParser(boundary, callbacks={
            "on_part_begin": self._part_begin,
            "on_header_field": lambda data, start, end: self._header_name.extend(data[start:end]),
            "on_header_value": lambda data, start, end: self._header_value.extend(
                data[start:end]),
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": self._part_data,
            "on_part_end": self._part_end,
            "on_end": self._end,
        })

    # -- the parser's callbacks (synchronous; file data waits in _pending for feed) --------
    def _fail(self, error: ApiError) -> None:
        if self.error is None:
            self.error = error

    def _part_begin(self) -> None:
        self._part = Part()
        self._headers = {}

    def _header_end(self) -> None:
        name = self._header_name.decode("latin-1").strip().lower()
        self._headers[name] = self._header_value.decode("latin-1").strip()
        self._header_name.clear()
        self._header_value.clear()

    def _headers_finished(self) -> None:
        kind, options = parse_options_header(self._headers.get("content-disposition", ""))
        name = options.get(b"name", b"").decode("utf-8", errors="replace")
        if kind != b"form-data" or not name:
            self._fail(BadRequest("each part needs a Content-Disposition: form-data with a name"))
            return
        self._part = Part(name, safe_filename(options.get(b"filename")),
                           self._headers.get("content-type"))
        if name in self.fields or (name == FILE_FIELD and self._file is not None):
            self._fail(BadRequest(f"field {name!r} must be given once"))
        elif name == FILE_FIELD:
            self._file = self._part
            self._stream = GridFSWriter(self._db, self.file_id, self._part.filename,
                                        metadata={"owner": self.owner})
        elif name in TEXT_FIELDS:
            self.fields[name] = bytearray()
        else:
            allowed = ", ".join(sorted((FILE_FIELD, *TEXT_FIELDS)))
            self._fail(BadRequest(f"unknown field {name!r}; allowed: {allowed}"))

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self.error is not None:
            return
        piece = bytes(data[start:end])
        name = self._part.name
        if self._part is self._file:
            self.size += len(piece)
            if self.size > self.max_file_size:
                self._fail(PayloadTooLarge(too_large_message(self.max_file_size)))
                return
            self._hash.update(piece)
            self._pending.append(piece)
        elif name in self.fields:
            self.fields[name].extend(piece)
            if len(self.fields[name]) > MAX_FIELD_SIZE:
                self._fail(BadRequest(f"field {name!r} is longer than {MAX_FIELD_SIZE} bytes"))

    def _part_end(self) -> None:
        # A wrong type sent before the file: no need to store the file at all.
        if self._part.name == "type" and self.error is None:
            self._check_type()

    def _end(self) -> None:
        self._ended = True

    # -- the handler's side -----------------------------------------------------------------
    async def feed(self, chunk: bytes) -> None:
        """Parse the next piece of the body and write the file data it holds to GridFS."""
        async with self._lock:
            self.received += len(chunk)
            if self.error is None and self.received > self.max_body_size:
                self._fail(PayloadTooLarge(too_large_message(self.max_file_size)))
            if self.error is None:
                try:
                    self._parser.write(chunk)
                except MultipartParseError as exc:
                    self._fail(BadRequest(f"malformed multipart/form-data body: {exc}"))
            pending, self._pending = self._pending, []
            if self.error is not None:
                # The rest of a refused body is read and dropped; what was stored goes now.
                await self._discard_file()
                return
            assert self._stream is not None or not pending
            for piece in pending:
                await self._stream.write(piece)  # type: ignore[union-attr]

    async def finish(self) -> Upload:
        """The whole body is in: the upload, its file closed; or the 400/413 it deserves (its
        file deleted)."""
        async with self._lock:
            if self.error is None:
                self._validate()
            if self.error is not None:
                await self._discard_file()
                raise self.error
            assert self._stream is not None
            assert self._file is not None
            await self._stream.close()
            self._kept = True
            return Upload(self.file_id, self._file.filename, self._format(),
                          self.size, self._hash.hexdigest())

    async def discard(self, *, force: bool = False) -> None:
        """Delete whatever of the file was stored, unless `finish` handed it on (then only
        with `force`: the job it was for could not be started). Never raises."""
        async with self._lock:
            if self._kept and not force:
                return
            try:
                await self._discard_file()
            except PyMongoError:
                log.warning("could not delete the upload %s from GridFS", self.file_id,
                            exc_info=True)

    async def _discard_file(self) -> None:
        if self._discarded or self._stream is None:
            return
        self._discarded = True
        await self._stream.delete()

    def _validate(self) -> None:
        if not self._ended:
            self._fail(BadRequest("the multipart/form-data body ends before its closing"
                                  " boundary"))
        elif self._check_type():
            if self._file is None:
                self._fail(BadRequest(f"the file is missing: send it in a part named"
                                      f" {FILE_FIELD!r}"))
            elif self.size == 0:
                self._fail(BadRequest("the file is empty"))
            else:
                self._format()

    def _text(self, name: str) -> str | None:
        raw = self.fields.get(name)
        if raw is None:
            return None
        try:
            return raw.decode("utf-8").strip()
        except UnicodeDecodeError:
            self._fail(BadRequest(f"field {name!r} is not valid UTF-8"))
            return None

    def _check_type(self) -> bool:
        if self._text("type") != "import":
            self._fail(BadRequest(
                "type must be import: only an import is uploaded as multipart/form-data"
                " (other jobs are sent as JSON)"))
            return False
        return True

    def _format(self) -> str:
        assert self._file is not None
        given = self._text("format")
        if given is not None:
            if given not in IMPORT_FORMATS:
                self._fail(BadRequest(f"format must be one of: {', '.join(IMPORT_FORMATS)}"))
            return given
        by_type = FORMAT_BY_MEDIA_TYPE.get(media_type(self._file.content_type))
        suffix = PurePosixPath(self._file.filename).suffix.lower()
        found = by_type or FORMAT_BY_EXTENSION.get(suffix)
        if found is None:
            self._fail(BadRequest(UNKNOWN_FORMAT))
            return ""
        return found


_discarding: set[asyncio.Task[None]] = set()


def discard_later(upload: ImportUpload) -> None:
    """Delete an abandoned upload's file in the background (the client went away)."""
    task = asyncio.get_running_loop().create_task(upload.discard())
    _discarding.add(task)
    task.add_done_callback(_discarding.discard)
