"""The base of every API handler: JSON errors, bounded bodies, bearer-token authentication."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from functools import cache, cached_property
from types import TracebackType
from typing import Any

from bson import ObjectId
from pymongo.errors import PyMongoError
from tornado.web import HTTPError, RequestHandler

from server.domain.errors import (
    DATABASE_UNAVAILABLE,
    ApiError,
    NotFound,
    PayloadTooLarge,
    ServiceUnavailable,
    database_unavailable,
)
from server.domain.jobs import JobStore
from server.domain.todos import TodoStore
from server.domain.tokens import Principal
from server.infra import logs
from server.web.inflight import InFlight
from server.web.metrics import Metrics
from server.web.services import Services

from . import cookies
from .bodies import BoundedBodyHandler

log = logging.getLogger("todo.api")
OVERLOADED = "server busy, try again shortly"
CLIENT_CLOSED_REQUEST = 499  # nginx's status for a request whose client went away


@cache  # once per class, not on every request's method check
def _implemented_methods(handler: type[RequestHandler]) -> tuple[str, ...]:
    return tuple(
        method for method in ("GET", "POST", "PUT", "PATCH", "DELETE")
        if getattr(handler, method.lower()) is not getattr(RequestHandler, method.lower())
    )


class APIHandler(BoundedBodyHandler):
    """JSON errors, bounded bodies (handlers/bodies.py), bearer-token authentication."""

    requires_auth = True
    # Refused with a 503 while the instance serves max_in_flight requests (health checks and
    # metrics are not: they must answer an overloaded instance too).
    sheddable = True
    shed = False

    def initialize(self) -> None:
        # Its headers are in: any write acknowledged to this client came before (see
        # PageCache._load_once, which shares only a load started after this).
        self.arrived_at = time.monotonic()
        self.start_body(small_body_limit=self.services.settings.max_body_size)
        self._tracked = True
        self.in_flight.started()
        # Set before Tornado creates the task that runs this request, which copies the
        # context: every line logged while handling it carries the id.
        logs.current_request_id.set(self.request_id)

    # -- dependencies, read from the application settings -------------------------------
    @property
    def services(self) -> Services:
        services: Services = self.settings["services"]
        return services

    @property
    def in_flight(self) -> InFlight:
        tracker: InFlight = self.settings["in_flight"]
        return tracker

    @property
    def metrics(self) -> Metrics:
        metrics: Metrics = self.settings["metrics"]
        return metrics

    @property
    def todos(self) -> TodoStore:
        return self.services.todos

    @property
    def jobs(self) -> JobStore:
        return self.services.jobs

    @property
    def principal(self) -> Principal:
        principal: Principal = self.current_user
        return principal

    @property
    def user_id(self) -> ObjectId:
        return self.principal.user_id

    # -- request life cycle --------------------------------------------------------------
    @cached_property
    def request_id(self) -> str:
        """nginx's X-Request-ID when it is sane, else a fresh id (also for direct callers)."""
        return logs.request_id_from(self.request.headers.get("X-Request-ID"))

    def set_default_headers(self) -> None:
        # clear() calls this, send_error() included: error replies carry the id too.
        self.set_header("X-Request-ID", self.request_id)

    def decode_argument(self, value: bytes, name: str | None = None) -> str:
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            # Only ids come in the path, and no id is non-UTF-8: it cannot exist.
            raise NotFound("not found") from None

    @classmethod
    def allowed_methods(cls) -> tuple[str, ...]:
        """The HTTP methods this handler implements (for 405 and its Allow header)."""
        return _implemented_methods(cls)  # type: ignore[arg-type]  # classes are hashable

    # Reads whose client has gone are cancelled (see on_connection_close).
    cancel_when_abandoned = frozenset({"GET", "HEAD"})
    _task: asyncio.Task[Any] | None = None
    # Cancelled so: Tornado "sends" a 500 to nobody, logged and counted as nginx's 499 instead.
    abandoned = False

    async def prepare(self) -> None:
        if self.request.method in self.cancel_when_abandoned:
            self._task = asyncio.current_task()
        try:
            await self.check_request()
        except Exception:
            await self.read_small_body()
            raise

    async def check_request(self) -> None:
        """What is decided before the body is read: the method, the declared size, the token."""
        # A wrong method is a 405 even without a token (Tornado would only find out later).
        if self.request.method not in self.allowed_methods():
            raise HTTPError(405)
        if self.sheddable and self.in_flight.count > self.services.settings.max_in_flight:
            # Overloaded: a quick 503 the client can retry beats queueing for seconds behind
            # MongoDB's pool until timeouts. Nothing has been read or written yet.
            self.shed = True
            raise ServiceUnavailable(OVERLOADED)
        declared = self.declared_length()
        if declared is not None and declared > self.body_limit:
            raise PayloadTooLarge(self.too_large_message())
        if self.requires_auth:
            self.current_user = await self._authenticate()

    async def _authenticate(self) -> Principal:
        # A bearer token, or a browser's session cookie (then CSRF-checked: handlers/cookies.py).
        token, self.by_cookie = cookies.request_token(self.request)
        principal, self.redis_read = await self.services.tokens.verify_and_read(
            token, self.redis_keys_to_read()
        )
        if self.by_cookie:
            cookies.check_csrf(self)
        return principal

    by_cookie = False  # authenticated by the session cookie, not an Authorization header

    # The values of the Redis keys redis_keys_to_read() named, read with the token's
    # revocation in one round trip (None when Redis was not asked or could not answer).
    redis_read: list[Any] | None = None

    def redis_keys_to_read(self) -> Callable[[Principal], Sequence[str]] | None:
        """The Redis keys this request will read, given its caller: a handler whose request
        reads Redis anyway names them here, to save a round trip."""
        return None

    def on_finish(self) -> None:
        self._untrack()

    def on_connection_close(self) -> None:
        # Tornado's own ends a streamed body that will never complete.
        super().on_connection_close()
        self._untrack()
        # A read nobody waits for any more would only hold a MongoDB or Redis connection that
        # a waiting request needs (nginx closes the connection when its client gives up).
        # Never a write: its cache invalidation and notification must run to the end.
        if self._task is not None and not self._finished:
            self.abandoned = True
            self._task.cancel()

    def _untrack(self) -> None:
        if self._tracked:
            self._tracked = False
            self.in_flight.ended()

    # -- errors: always JSON, internals never leak ---------------------------------------
    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        message = self._reason
        if self.abandoned:
            status_code, message = CLIENT_CLOSED_REQUEST, "client closed request"
        elif isinstance(exc, ApiError):
            status_code, message = exc.status, exc.message
        elif isinstance(exc, HTTPError) and exc.log_message:
            message = exc.log_message % exc.args if exc.args else exc.log_message
        elif database_unavailable(exc):
            status_code, message = 503, DATABASE_UNAVAILABLE
        elif status_code >= 500:
            message = "internal server error"
        self.set_status(status_code)
        if status_code == 401:
            self.set_header("WWW-Authenticate", 'Bearer realm="todo"')
        if status_code == 503 or getattr(exc, "retry_after", None):
            self.set_header("Retry-After", str(getattr(exc, "retry_after", None) or 1))
        if status_code == 405:
            self.set_header("Allow", ", ".join(self.allowed_methods()))
        if self.body_unread():
            # Tornado closes the connection after this reply: say so, so that clients and
            # nginx's keepalive pool do not send their next request on it.
            self.set_header("Connection", "close")
        self.finish({"error": {"status": status_code, "message": message}})

    def log_exception(
        self,
        typ: type[BaseException] | None,
        value: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if isinstance(value, PyMongoError):
            self.metrics.mongo_error(unavailable=database_unavailable(value))
        if (isinstance(value, ApiError) and value.status < 500) or self.shed:
            return  # the client's mistake: nginx's access log line (with the id) is enough
        if isinstance(value, ApiError) or database_unavailable(value):
            log.warning("%s %s -> 503: %s", self.request.method, self.request.uri, value)
            return
        super().log_exception(typ, value, tb)


class NotFoundHandler(APIHandler):
    """Every unknown path: a JSON 404, whatever the method."""

    requires_auth = False

    async def check_request(self) -> None:
        raise NotFound(f"no route for {self.request.path}")
