"""Parsing and validation of request bodies and query strings, in one place.

Every value that reaches a MongoDB filter or document passes through here and comes out as a
plain `str`, `bool`, `int` or `ObjectId`, so operator injection (`{"$ne": null}`) cannot happen.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from bson import ObjectId
from tornado import httputil

from server.domain.errors import BadRequest, NotFound, UnsupportedMediaType
from server.domain.paging import Cursor, decode_cursor

MAX_CONTENT_LENGTH = 1000
DEFAULT_LIMIT = 10
MAX_LIMIT = 100
USERNAME_PATTERN = re.compile(r"[a-z0-9_.-]{3,32}")
MIN_PASSWORD_LENGTH = 8
JOB_TYPES = ("purge", "export")
EXPORT_FORMATS = ("json", "csv")
IMPORT_FORMATS = ("json", "csv")
# What an exported todo holds besides content and is_finished: accepted in an import row (so an
# export can be imported back) and ignored, since the server sets them.
IMPORT_IGNORED_FIELDS = frozenset({"id", "created_at", "updated_at", "finished_at"})
MAX_PURGE_DAYS = 3650
MAX_PASSWORD_LENGTH = 1024
FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")
IDEMPOTENCY_HEADER = "Idempotency-Key"
MAX_IDEMPOTENCY_KEY_LENGTH = 255
# Printable ASCII, space included (Tornado has already trimmed spaces around the value).
IDEMPOTENCY_KEY_PATTERN = re.compile(rf"[\x20-\x7e]{{1,{MAX_IDEMPOTENCY_KEY_LENGTH}}}")


@dataclass(frozen=True)
class TodoCreate:
    content: str


@dataclass(frozen=True)
class TodoImport:
    """One row of an import: a todo as POST /todo creates it, possibly already finished."""

    content: str
    is_finished: bool = False


@dataclass(frozen=True)
class TodoUpdate:
    """Only the fields the client sent are set; None means "leave as it is"."""

    content: str | None = None
    is_finished: bool | None = None


@dataclass(frozen=True)
class JobCreate:
    type: str
    params: dict[str, Any]


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str


@dataclass(frozen=True)
class ListQuery:
    limit: int = DEFAULT_LIMIT
    start: int = 0
    finished: bool | None = None
    cursor: Cursor | None = None

    @property
    def is_default(self) -> bool:
        """The query every client makes first: the one the Redis page cache serves."""
        return self == ListQuery()


def media_type(content_type: str | None) -> str:
    return (content_type or "").split(";", 1)[0].strip().lower()


def parse_json_object(body: bytes, content_type: str | None) -> dict[str, Any]:
    """The body as a JSON object, or a 400/415 saying what is wrong with it."""
    if media_type(content_type) != "application/json":
        raise UnsupportedMediaType("Content-Type must be application/json")
    try:
        value = json.loads(body.decode("utf-8"))
        # "\ud800" escapes decode to lone surrogates that no UTF-8 store can hold.
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeError:
        raise BadRequest("request body is not valid UTF-8 (or holds a lone surrogate)") from None
    except json.JSONDecodeError as exc:
        message = f"request body is not valid JSON: {exc.msg} at position {exc.pos}"
        raise BadRequest(message) from None
    except RecursionError:
        raise BadRequest("request body is nested too deeply") from None
    if not isinstance(value, dict):
        raise BadRequest("request body must be a JSON object")
    return value


def parse_form(body: bytes, content_type: str, headers: httputil.HTTPHeaders) -> dict[str, str]:
    """Form fields as single strings; repeated fields and file uploads are refused."""
    arguments: dict[str, list[bytes]] = {}
    files: dict[str, list[httputil.HTTPFile]] = {}
    try:
        httputil.parse_body_arguments(content_type, body, arguments, files, headers)
    except httputil.HTTPInputError as exc:
        raise BadRequest(f"malformed form body: {exc}") from None
    if files:
        raise BadRequest(f"unknown field {next(iter(files))!r}: file uploads are not accepted")
    fields: dict[str, str] = {}
    for name, values in arguments.items():
        if len(values) != 1:
            raise BadRequest(f"field {name!r} must be given once")
        try:
            fields[name] = values[0].decode("utf-8")
        except UnicodeDecodeError:
            raise BadRequest(f"field {name!r} is not valid UTF-8") from None
    return fields


def parse_fields(body: bytes, headers: httputil.HTTPHeaders) -> dict[str, Any]:
    """A JSON object body or a form body (as the original clients send), by Content-Type."""
    content_type = headers.get("Content-Type")
    if media_type(content_type) in FORM_TYPES:
        return parse_form(body, content_type or "", headers)
    if media_type(content_type) == "application/json":
        return parse_json_object(body, content_type)
    raise UnsupportedMediaType(
        "Content-Type must be application/json, application/x-www-form-urlencoded"
        " or multipart/form-data"
    )


def _reject_unknown(fields: Mapping[str, Any], allowed: set[str], noun: str = "field") -> None:
    unknown = sorted(set(fields) - allowed)
    if unknown:
        raise BadRequest(f"unknown {noun} {unknown[0]!r}; allowed: {', '.join(sorted(allowed))}")


def _content(value: Any) -> str:
    if not isinstance(value, str):
        raise BadRequest("content must be a string")
    content = value.strip()
    if not content:
        raise BadRequest("content must not be empty")
    if len(content) > MAX_CONTENT_LENGTH:
        raise BadRequest(f"content must be at most {MAX_CONTENT_LENGTH} characters")
    return content


def todo_create(fields: Mapping[str, Any]) -> TodoCreate:
    _reject_unknown(fields, {"content"})
    if "content" not in fields:
        raise BadRequest("content is required")
    return TodoCreate(content=_content(fields["content"]))


def todo_import(fields: Mapping[str, Any]) -> TodoImport:
    """A row of an import file: `content` under the rules of POST /todo, an optional boolean
    `is_finished`, and the read-only fields of an export, which are ignored."""
    _reject_unknown(fields, {"content", "is_finished", *IMPORT_IGNORED_FIELDS})
    content = todo_create({"content": fields["content"]} if "content" in fields else {}).content
    is_finished = fields.get("is_finished", False)
    if not isinstance(is_finished, bool):
        raise BadRequest("is_finished must be true or false")
    try:
        content.encode("utf-8")
    except UnicodeError:
        raise BadRequest("content holds a lone surrogate (not valid UTF-8)") from None
    return TodoImport(content=content, is_finished=is_finished)


def todo_update(fields: Mapping[str, Any]) -> TodoUpdate:
    _reject_unknown(fields, {"content", "is_finished"})
    if not fields:
        raise BadRequest("nothing to update: send content and/or is_finished")
    content = _content(fields["content"]) if "content" in fields else None
    is_finished = fields.get("is_finished")
    if "is_finished" in fields and not isinstance(is_finished, bool):
        raise BadRequest("is_finished must be true or false")
    return TodoUpdate(content=content, is_finished=is_finished)


def credentials(fields: Mapping[str, Any], *, new_account: bool) -> Credentials:
    _reject_unknown(fields, {"username", "password"})
    username, password = fields.get("username"), fields.get("password")
    if not isinstance(username, str) or not isinstance(password, str):
        raise BadRequest("username and password are required strings")
    if new_account:
        if not USERNAME_PATTERN.fullmatch(username):
            raise BadRequest("username must be 3-32 characters of a-z, 0-9, '_', '.', '-'")
        if len(password) < MIN_PASSWORD_LENGTH:
            raise BadRequest(f"password must be at least {MIN_PASSWORD_LENGTH} characters")
    if len(password) > MAX_PASSWORD_LENGTH:
        raise BadRequest(f"password must be at most {MAX_PASSWORD_LENGTH} characters")
    return Credentials(username=username, password=password)


def job_create(fields: Mapping[str, Any]) -> JobCreate:
    """`{"type": "purge", "older_than_days": N}` or `{"type": "export", "format": "json"|"csv"}`:
    the job to run and its parameters."""
    kind = fields.get("type")
    if kind not in JOB_TYPES:
        raise BadRequest(f"type must be one of: {', '.join(JOB_TYPES)}"
                         " (an import is uploaded as multipart/form-data, with a file part)")
    if kind == "export":
        _reject_unknown(fields, {"type", "format"})
        fmt = fields.get("format")
        if fmt not in EXPORT_FORMATS:
            raise BadRequest(f"format must be one of: {', '.join(EXPORT_FORMATS)}")
        return JobCreate(type=kind, params={"format": fmt})
    _reject_unknown(fields, {"type", "older_than_days"})
    days = fields.get("older_than_days")
    # JSON has one number type: `30.0` is the integer 30 (JSON Schema's "integer" says so too),
    # `30.5` is not an integer at all.
    if isinstance(days, float) and days.is_integer():
        days = int(days)
    # bool is an int in Python; `true` is not a number of days.
    if not isinstance(days, int) or isinstance(days, bool) or not 0 <= days <= MAX_PURGE_DAYS:
        raise BadRequest(f"older_than_days must be an integer from 0 to {MAX_PURGE_DAYS}")
    return JobCreate(type=kind, params={"older_than_days": days})


def _int_argument(name: str, raw: str, low: int, high: int) -> int:
    if not (raw.isascii() and raw.isdigit()) or not low <= int(raw) <= high:
        raise BadRequest(f"{name} must be an integer from {low} to {high}")
    return int(raw)


def list_query(arguments: Mapping[str, list[bytes]]) -> ListQuery:
    """`?start=&limit=&finished=&cursor=`; anything else (like `finished[$ne]`) is refused."""
    _reject_unknown(arguments, {"start", "limit", "finished", "cursor"}, "query parameter")
    values: dict[str, str] = {}
    for name, raw in arguments.items():
        if len(raw) != 1:
            raise BadRequest(f"query parameter {name!r} must be given once")
        values[name] = raw[0].decode("utf-8", errors="replace")
    if "start" in values and "cursor" in values:
        raise BadRequest("use either start or cursor, not both")
    finished = values.get("finished")
    if finished not in (None, "true", "false"):
        raise BadRequest("finished must be true or false")
    return ListQuery(
        limit=_int_argument("limit", values["limit"], 1, MAX_LIMIT) if "limit" in values
        else DEFAULT_LIMIT,
        start=_int_argument("start", values["start"], 0, 10**9) if "start" in values else 0,
        finished=None if finished is None else finished == "true",
        cursor=decode_cursor(values["cursor"]) if "cursor" in values else None,
    )


def idempotency_key(headers: httputil.HTTPHeaders) -> str | None:
    """The optional `Idempotency-Key` header, used verbatim (case and quotes kept)."""
    values = headers.get_list(IDEMPOTENCY_HEADER)
    if not values:
        return None
    # Two header lines would be two keys: which one the client meant is anybody's guess.
    if len(values) > 1:
        raise BadRequest(f"{IDEMPOTENCY_HEADER} must be given once")
    if not IDEMPOTENCY_KEY_PATTERN.fullmatch(values[0]):
        raise BadRequest(
            f"{IDEMPOTENCY_HEADER} must be 1-{MAX_IDEMPOTENCY_KEY_LENGTH} printable ASCII"
            " characters"
        )
    return values[0]


def object_id(raw: str, what: str = "todo") -> ObjectId:
    """An id from the URL; anything that is not an ObjectId cannot exist, so it is a 404."""
    if not ObjectId.is_valid(raw) or len(raw) != 24:
        raise NotFound(f"{what} not found")
    return ObjectId(raw)
