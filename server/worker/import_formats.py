"""Import files parsed a row at a time: JSON (an array of objects, or JSON Lines) and CSV
(with a header row), decoded from UTF-8 as their chunks arrive.

Streaming: no more than a chunk and one row are held, and no line or JSON element longer than
MAX_ROW_CHARS is read. Each row is validated with the rules of POST /todo
(server/domain/validation.py's todo_import); a file that cannot be read at all raises
`ImportFileError`. Used by the import job (server/worker/importing.py).
"""

from __future__ import annotations

import codecs
import csv
import itertools
import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from server.domain.errors import BadRequest
from server.domain.validation import IMPORT_IGNORED_FIELDS, TodoImport, todo_import

# The longest line (CSV, JSON Lines) or JSON array element read; a valid row is far shorter.
MAX_ROW_CHARS = 1024 * 1024
CSV_TRUE, CSV_FALSE = ("true", "1"), ("false", "0", "")
_NON_SPACE = re.compile(r"[^ \t\r\n]")
_DECODER = json.JSONDecoder()


class ImportFileError(Exception):
    """The file as a whole cannot be imported; the message is for the user."""


@dataclass(frozen=True)
class Row:
    line: int  # the file's line (1-based) where the row starts
    todo: TodoImport | None
    error: str | None = None
    number: int = 0  # the row's place in the file, 1-based (a JSON line may hold many rows)



def _texts(chunks: Iterable[bytes], digest: Any = None) -> Iterator[str]:
    """The file's text, chunk by chunk; a UTF-8 byte order mark is dropped."""
    decoder = codecs.getincrementaldecoder("utf-8-sig")()
    offset = 0
    try:
        for chunk in chunks:
            if digest is not None:
                digest.update(chunk)
            yield decoder.decode(chunk)
            offset += len(chunk)
        yield decoder.decode(b"", final=True)
    except UnicodeDecodeError as exc:
        raise ImportFileError(
            f"the file is not valid UTF-8 (near byte {offset + exc.start})"
        ) from None


def _lines(texts: Iterable[str]) -> Iterator[str]:
    """Lines with their endings, as csv.reader wants them; none longer than MAX_ROW_CHARS."""
    pending: list[str] = []
    size, number = 0, 1
    for text in texts:
        start = 0
        while (end := text.find("\n", start)) != -1:
            pending.append(text[start:end + 1])
            yield "".join(pending)
            pending.clear()
            size, number, start = 0, number + 1, end + 1
        if start < len(text):
            pending.append(text[start:])
            size += len(text) - start
            if size > MAX_ROW_CHARS:
                raise ImportFileError(f"line {number} is longer than {MAX_ROW_CHARS} characters")
    if pending:
        yield "".join(pending)


def _row(line: int, fields: Any) -> Row:
    if not isinstance(fields, dict):
        return Row(line, None, "the row is not a JSON object")
    try:
        return Row(line, todo_import(fields))
    except BadRequest as exc:
        return Row(line, None, exc.message)


def csv_rows(texts: Iterable[str]) -> Iterator[Row]:
    """The rows of a CSV file with a header row (`content`, optionally `is_finished`, and the
    columns of an export, ignored); a record may span lines inside quotes."""
    reader = csv.reader(_lines(texts), strict=True)
    start = 1  # the line where the record being read starts
    try:
        header = [name.strip() for name in next(reader, [])]
        if "content" not in header:
            raise ImportFileError("the CSV file's first row must be a header naming a"
                                  " content column")
        allowed = {"content", "is_finished", *IMPORT_IGNORED_FIELDS}
        for name in header:
            if name not in allowed:
                raise ImportFileError(f"unknown column {name!r} in the CSV header; allowed:"
                                      f" {', '.join(sorted(allowed))}")
            if header.count(name) > 1:
                raise ImportFileError(f"column {name!r} appears twice in the CSV header")
        start = reader.line_num + 1
        for record in reader:
            line, start = start, reader.line_num + 1
            if not record:
                continue  # a blank line
            if len(record) != len(header):
                yield Row(line, None, f"the row has {len(record)} fields; the header has"
                                      f" {len(header)}")
                continue
            yield _row(line, _csv_fields(dict(zip(header, record, strict=True))))
    except csv.Error as exc:
        raise ImportFileError(f"the CSV record at line {start} is malformed: {exc}") from None


def _csv_fields(fields: dict[str, Any]) -> dict[str, Any]:
    if "is_finished" in fields:
        flag = fields["is_finished"].strip().lower()
        # Anything else stays a string, which validation refuses like a JSON one.
        fields["is_finished"] = True if flag in CSV_TRUE else False if flag in CSV_FALSE \
            else fields["is_finished"]
    return fields


class _JsonText:
    """A sliding window over the file's text, for JSONDecoder.raw_decode, knowing its line."""

    def __init__(self, texts: Iterable[str]) -> None:
        self.texts = iter(texts)
        self.buffer = ""
        self.pos = 0
        self.line = 1
        self.eof = False

    def more(self) -> bool:
        for text in self.texts:
            if text:
                self.buffer = self.buffer[self.pos:] + text
                self.pos = 0
                return True
        self.eof = True
        return False

    def advance(self, to: int) -> None:
        self.line += self.buffer.count("\n", self.pos, to)
        self.pos = to

    def peek(self) -> str | None:
        """The next character that is not white space (not consumed); None at the end."""
        while True:
            found = _NON_SPACE.search(self.buffer, self.pos)
            if found:
                self.advance(found.start())
                return self.buffer[self.pos]
            self.advance(len(self.buffer))
            if not self.more():
                return None

    def value(self) -> Any:
        """The JSON value starting here, read as far as the file needs."""
        while True:
            try:
                value, end = _DECODER.raw_decode(self.buffer, self.pos)
                # A value that reaches the end of the window may go on (a number, cut short).
                if end < len(self.buffer) or self.eof:
                    self.advance(end)
                    return value
            except json.JSONDecodeError as exc:
                if self.eof or len(self.buffer) - self.pos > MAX_ROW_CHARS:
                    at = self.line + self.buffer.count("\n", self.pos, exc.pos)
                    raise ImportFileError(f"the file is not valid JSON at line {at}: {exc.msg}"
                                          ) from None
            except RecursionError:
                raise ImportFileError(f"the JSON element at line {self.line} is nested too"
                                      " deeply") from None
            self.more()

    def expect_end(self, what: str) -> None:
        if self.peek() is not None:
            raise ImportFileError(f"the file is not valid JSON at line {self.line}: unexpected"
                                  f" data after {what}")


def json_rows(texts: Iterable[str]) -> Iterator[Row]:
    """The rows of a JSON array of objects, or of JSON Lines (one object per line)."""
    window = _JsonText(texts)
    first = window.peek()
    if first == "{":
        yield from _json_lines(window)
        return
    if first is None:
        raise ImportFileError("the file holds no JSON, only white space")
    if first != "[":
        raise ImportFileError("a JSON import must be an array of objects, or one object per"
                              " line (JSON Lines)")
    window.advance(window.pos + 1)
    if window.peek() == "]":
        window.advance(window.pos + 1)
    else:
        while True:
            if window.peek() is None:
                break
            line = window.line
            yield _row(line, window.value())
            following = window.peek()
            if following is None:
                break
            window.advance(window.pos + 1)
            if following == "]":
                window.expect_end("the array")
                return
            if following != ",":
                raise ImportFileError(f"the file is not valid JSON at line {window.line}: expected"
                                      " ',' or ']'")
        raise ImportFileError("the file is not valid JSON: the array is not closed")


def _json_lines(window: _JsonText) -> Iterator[Row]:
    rest = window.buffer[window.pos:]
    for number, text in enumerate(_lines(itertools.chain([rest], window.texts)),
                                  start=window.line):
        if not text.strip():
            continue
        try:
            yield _row(number, json.loads(text.rstrip("\r\n")))
        except json.JSONDecodeError as exc:
            yield Row(number, None, f"not valid JSON: {exc.msg} at column {exc.colno}")
        except RecursionError:
            yield Row(number, None, "not valid JSON: nested too deeply")


def rows(fmt: str, chunks: Iterable[bytes], digest: Any = None) -> Iterator[Row]:
    """The file's rows, numbered."""
    texts = _texts(chunks, digest)
    found = csv_rows(texts) if fmt == "csv" else json_rows(texts)
    for number, row in enumerate(found, start=1):
        yield Row(row.line, row.todo, row.error, number)
