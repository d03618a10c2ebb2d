"""GET /ws: the caller's live notifications over a WebSocket (their shapes are in
server/infra/notifications.py).

The token is checked before the upgrade, exactly as on the API (signature, expiry,
revocation), from `Authorization: Bearer`, `?access_token=`, or the browser session's cookie
(then only from a page of this very origin, by its Origin header); refusals are the
API's JSON errors. Each socket has a bounded queue drained by its own sender, which awaits
every write: a client that stops reading is disconnected once its queue is full instead of
growing the server's memory.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import deque
from typing import Any
from urllib.parse import urlsplit

from tornado.web import HTTPError
from tornado.websocket import WebSocketClosedError, WebSocketHandler

from server.domain.errors import (
    BadRequest,
    Forbidden,
    ServiceUnavailable,
    TooManyRequests,
    Unauthorized,
)
from server.domain.tokens import INVALID_TOKEN, Principal
from server.infra import notifications
from server.web.hub import Hub

from . import cookies
from .base import APIHandler

log = logging.getLogger("todo.ws")
# Clients only ever send {"type": "ping"}; anything much bigger is a mistake or an attack.
MAX_INCOMING_MESSAGE = 4096
POLICY_VIOLATION = 1008
NOT_A_WEBSOCKET = (
    "GET /ws must be a WebSocket handshake (Upgrade: websocket, Connection: Upgrade, "
    "Sec-WebSocket-Key, Sec-WebSocket-Version: 13)"
)
COOKIE_FROM_ANOTHER_SITE = (
    "a notification socket opened with the session cookie must come from this site's own "
    "page (its Origin header)"
)
TOO_SLOW = "too slow: notifications were not read in time; reconnect and refetch"


def is_websocket_handshake(headers: Any) -> bool:
    connection = {part.strip().lower() for part in headers.get("Connection", "").split(",")}
    return (
        headers.get("Upgrade", "").lower() == "websocket"
        and "upgrade" in connection
        and bool(headers.get("Sec-WebSocket-Key"))
        and headers.get("Sec-WebSocket-Version") == "13"
    )


def allowed_origins(setting: str) -> set[str]:
    return {origin.strip().rstrip("/").lower() for origin in setting.split(",") if origin.strip()}


class NotificationSocket(APIHandler, WebSocketHandler):
    """One client's notifications; APIHandler gives it the API's errors, ids and tokens."""

    def initialize(self) -> None:
        super().initialize()
        self.needs_resync = False
        self._queue: deque[str] = deque()
        self._wake = asyncio.Event()
        self._sender: asyncio.Task[None] | None = None
        self._expiry: asyncio.TimerHandle | None = None
        self._joined = False
        self._shut = False

    @property
    def hub(self) -> Hub:
        return self.services.hub

    @property
    def token_id(self) -> str:
        return self.principal.token_id

    @property
    def queued(self) -> int:
        return len(self._queue)

    # -- before the upgrade: the API's rules and JSON errors -----------------------------------
    async def check_request(self) -> None:
        if self.request.method != "GET":
            raise HTTPError(405)
        if not is_websocket_handshake(self.request.headers):
            raise BadRequest(NOT_A_WEBSOCKET)
        unknown = sorted(set(self.request.query_arguments) - {"access_token"})
        if unknown:
            raise BadRequest(f"unknown query parameter {unknown[0]!r}")
        if not self._origin_allowed():
            raise Forbidden("this Origin may not open notification sockets")
        if self.hub.closing:
            raise ServiceUnavailable("the server is shutting down; connect again")
        self.current_user = await self._authenticate()
        limit = self.services.settings.ws_max_per_user
        if self.hub.count(self.user_id) >= limit:
            raise TooManyRequests(f"at most {limit} notification sockets per user")

    async def _authenticate(self) -> Principal:
        given = self.request.query_arguments.get("access_token", [])
        if "Authorization" in self.request.headers or not given:
            principal = await super()._authenticate()
            # The session cookie: a page of any site may open a socket, and the browser sends
            # the cookie along; only this site's own pages may use it.
            if self.by_cookie and not cookies.origin_is_own(self.request):
                raise Forbidden(COOKIE_FROM_ANOTHER_SITE)
            return principal
        # Browsers cannot set headers on a WebSocket. The instance logs paths without their
        # query, and nginx's /ws location logs no query either.
        if len(given) != 1 or not given[0].strip():
            raise Unauthorized(INVALID_TOKEN)
        return await self.services.tokens.verify(given[0].decode("utf-8", "replace").strip())

    def _origin_allowed(self) -> bool:
        """Tornado's own rule (same origin, or no Origin: not a browser), decided here so that
        a refusal is a JSON 403; other origins must be listed in the ws_origins setting."""
        site = self.request.headers.get("Sec-Fetch-Site")
        if site in ("same-origin", "none"):
            return True
        origin = self.request.headers.get("Origin")
        if origin is None:
            return site is None
        host = self.request.headers.get("Host", "").lower()
        if site is None and urlsplit(origin).netloc.lower() == host:
            return True
        return self.check_origin(origin)

    def check_origin(self, origin: str) -> bool:
        allowed = allowed_origins(self.services.settings.ws_origins)
        return "*" in allowed or origin.rstrip("/").lower() in allowed

    # -- the open socket ------------------------------------------------------------------------
    async def open(self, *args: str, **kwargs: str) -> None:
        """Subscribe, then say hello: whatever happens after the hello reaches the client."""
        self.set_nodelay(True)
        self._sender = asyncio.create_task(self._send_queued())
        lifetime = max(0.0, self.principal.expires_at - time.time())
        self._expiry = asyncio.get_running_loop().call_later(
            lifetime, self.shut, POLICY_VIOLATION, "token expired"
        )
        self._joined = True
        await self.hub.join(self)
        if self.hub.closing:
            self.shut(1001, "server shutting down")
        if not self._shut:
            # First, ahead of anything delivered while the subscription was confirmed.
            self._queue.appendleft(notifications.encode(notifications.hello(self.user_id)))
            self._wake.set()

    def deliver(self, data: str) -> None:
        """Queue one message (JSON text) for the sender; a full queue ends the socket."""
        if self._shut:
            return
        if len(self._queue) >= self.services.settings.ws_queue_size:
            self.hub.slow_disconnects += 1
            log.info("closing a notification socket of %s: %s", self.user_id, TOO_SLOW)
            self.shut(POLICY_VIOLATION, TOO_SLOW)
            return
        self._queue.append(data)
        self._wake.set()

    async def _send_queued(self) -> None:
        try:
            while True:
                while not self._queue:
                    self._wake.clear()
                    await self._wake.wait()
                # Awaited: Tornado's buffer holds one message at most, the rest wait here.
                await self.write_message(self._queue.popleft())
                self.hub.sent += 1
        except WebSocketClosedError:
            pass

    def on_message(self, message: str | bytes) -> None:
        """`{"type": "ping"}` is answered with a pong; anything else is ignored."""
        try:
            parsed = json.loads(message)
        except ValueError:
            return
        if isinstance(parsed, dict) and parsed.get("type") == "ping":
            self.deliver(notifications.encode(notifications.pong()))

    def shut(self, code: int, reason: str) -> None:
        """Stop delivering at once and start the closing handshake; idempotent."""
        if self._shut:
            return
        self._shut = True
        if self._joined:
            self.hub.leave(self)
        self._queue.clear()
        if self._sender is not None:
            self._sender.cancel()
        if self._expiry is not None:
            self._expiry.cancel()
        self.close(code, reason)

    def on_close(self) -> None:
        self.shut(1000, "")
        if self._joined:
            self.hub.closed(self)

    def on_connection_close(self) -> None:
        self._untrack()
        WebSocketHandler.on_connection_close(self)


default_handlers = [
    (r"/ws", NotificationSocket),
]
