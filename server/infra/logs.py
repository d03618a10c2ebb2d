"""Structured logs: one JSON object per line, each carrying the id of the request it belongs to.

The request id travels in a ContextVar rather than through every call: Tornado runs each request
in a task of its own, which copies the context it was created in, so whatever a request logs
(handler, store, cache, Redis guard) is tagged without being handed the id.
"""

from __future__ import annotations

import copy
import json
import logging
import random
import re
import uuid
from collections.abc import Callable
from contextvars import ContextVar
from datetime import UTC, datetime
from logging.handlers import QueueHandler, QueueListener
from queue import SimpleQueue
from typing import Any, TextIO

from tornado.web import RequestHandler

from server.infra.caller import Caller
from server.infra.clock import isoformat

access_log = logging.getLogger("todo.access")
current_request_id: ContextVar[str | None] = ContextVar("current_request_id", default=None)
# What nginx's $request_id and common tracing ids look like; anything else is not echoed, so a
# client cannot inject spaces, quotes or control characters into log lines or headers.
SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,128}")
# Set `extra={FIELDS: {...}}` on a log call to add keys to its JSON object.
FIELDS = "fields"


def request_id_from(header: str | None) -> str:
    """The incoming X-Request-ID when it is a sane token, else a fresh one."""
    if header is not None and SANE_REQUEST_ID.fullmatch(header):
        return header
    return uuid.uuid4().hex


class RequestIdFilter(logging.Filter):
    """Tags each record with the id of the request being handled (None outside requests)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "request_id", None) is None:
            record.request_id = current_request_id.get()
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": isoformat(datetime.fromtimestamp(record.created, UTC)),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = getattr(record, "request_id", None)
        if request_id is not None:
            entry["request_id"] = request_id
        entry.update(getattr(record, FIELDS, None) or {})
        if record.exc_info:
            # Formatted once per record, as logging.Formatter does, however many handlers.
            record.exc_text = record.exc_text or self.formatException(record.exc_info)
        if record.exc_text:
            entry["exc_info"] = record.exc_text
        if record.stack_info:
            entry["stack_info"] = self.formatStack(record.stack_info)
        # ASCII only: a lone surrogate or a control character in a message cannot break the
        # line or the stream's encoding.
        return json.dumps(entry, default=str)


def json_handler(stream: TextIO) -> logging.Handler:
    """A handler writing JSON lines with request ids to `stream`."""
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(RequestIdFilter())
    return handler


class _HandOff(QueueHandler):
    """Queues records for the writer thread, resolving first what only this thread knows."""

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        record = copy.copy(record)
        record.msg, record.args = record.getMessage(), None
        if record.exc_info:
            record.exc_text = record.exc_text or _FORMATTER.formatException(record.exc_info)
            record.exc_info = None
        return record


_FORMATTER = JsonFormatter()


def install(*, level: int, stream: TextIO) -> Callable[[], None]:
    """Make every logger of the process write JSON lines to `stream` (and nowhere else).

    The event loop only puts records on a queue; a thread writes them. A slow reader of the
    stream (a busy supervisord, a full pipe) then delays log lines, never requests. Returns the
    function that flushes and stops the writer, for shutdown.
    """
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    queue: SimpleQueue[logging.LogRecord] = SimpleQueue()
    hand_off = _HandOff(queue)
    hand_off.addFilter(RequestIdFilter())  # the request id lives in this thread's context
    writer = QueueListener(queue, json_handler(stream))
    writer.start()
    root.addHandler(hand_off)
    root.setLevel(level)

    def stop() -> None:
        root.removeHandler(hand_off)
        writer.stop()

    return stop


class AccessLog:
    """Which finished requests an instance logs: nginx's JSON access log already has a line
    for every request, with its id, so one line here per request is formatting work under the
    GIL for nothing. Logged are server errors (5xx), slow requests, and a sampled share; a 4xx
    is the client's mistake, in nginx's log with its id, and logged here only when sampled or
    slow (a flood of bad tokens must not become a flood of log lines)."""

    def __init__(self, *, slow_ms: float, sample: float) -> None:
        self.slow_seconds = slow_ms / 1000
        self.sample = sample

    def __call__(self, handler: RequestHandler, route: str) -> None:
        status = handler.get_status()
        duration = handler.request.request_time()
        slow = duration >= self.slow_seconds
        # A request shed under overload is sampled like a 4xx: logging each would add load.
        quiet = status < 500 or getattr(handler, "shed", False)
        if quiet and not slow and (
            self.sample <= 0 or random.random() >= self.sample  # noqa: S311
        ):
            return
        log_access(handler, route, status=status, duration=duration, slow=slow)


def log_access(
    handler: RequestHandler, route: str, *, status: int, duration: float, slow: bool = False
) -> None:
    """One access line, at Tornado's levels; a slow success is a warning."""
    request = handler.request
    user = handler.current_user
    fields = {
        "request_id": getattr(handler, "request_id", None),
        "user_id": str(user.user_id) if isinstance(user, Caller) else None,
        "route": route,
        "method": request.method,
        "path": request.path,
        "status": status,
        "duration_ms": round(duration * 1000, 3),
        "remote_ip": request.remote_ip,
    }
    level = logging.INFO if status < 400 else logging.WARNING if status < 500 else logging.ERROR
    if slow and level < logging.WARNING:
        level = logging.WARNING
    access_log.log(
        level, "%s %s %d", request.method, request.path, status, extra={FIELDS: fields}
    )
