"""The instance's side of live notifications: one Redis pub/sub connection, many WebSockets.

The hub SUBSCRIBEs to a user's channel when that user's first socket connects to this
instance and UNSUBSCRIBEs when the last one leaves; a reader task takes each message off the
connection and hands it to the user's local sockets, which queue it (bounded) for their own
sender. Nothing here waits on a client, so a slow socket slows no one else.

When Redis drops, the reader reconnects with backoff and subscribes again to every channel
that still has sockets; once Redis confirms a channel, each of its sockets is sent `resync`
(messages published meanwhile are lost: the client refetches). Redis is checked with a PING
whenever the connection has been quiet for a while, so a hung server is noticed too.

What the hub keeps per channel, needs of a socket, and reads from is in server/web/channels.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable
from typing import Any

from bson import ObjectId
from redis.asyncio import Redis
from redis.asyncio.client import PubSub

from server.infra import notifications
from server.infra.redis_guard import REDIS_FAILURES
from server.infra.settings import Settings
from server.web.channels import Channel, Subscriber, channel_text, close_quietly, pubsub_client

log = logging.getLogger("todo.hub")

# A connection quiet this long is PINGed; one that stays quiet as long again is given up.
QUIET_SECONDS = 5.0
MIN_BACKOFF, MAX_BACKOFF = 0.1, 5.0
GOING_AWAY = 1001


class Hub:
    def __init__(
        self, settings: Settings, *, client: Callable[[], Redis] | None = None
    ) -> None:
        self.prefix = settings.redis_prefix
        self.confirm_timeout = settings.redis_timeout
        self._new_client = client or (lambda: pubsub_client(settings))
        self._channels: dict[str, Channel] = {}
        self._open: set[Subscriber] = set()
        self._closed_event = asyncio.Event()
        self._pubsub: PubSub | None = None
        self._client: Redis | None = None
        self._send_lock = asyncio.Lock()
        self._reader: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.closing = False
        # Counters for the metrics.
        self.sent = 0
        self.slow_disconnects = 0
        self.reconnects = 0

    # -- sockets ----------------------------------------------------------------------
    @property
    def sockets(self) -> int:
        """Open sockets on this instance (those closing included, until they have closed)."""
        return len(self._open)

    @property
    def queued(self) -> int:
        """Messages waiting in the sockets' queues (each bounded by ws_queue_size)."""
        return sum(socket.queued for socket in self._open)

    def count(self, user_id: ObjectId) -> int:
        state = self._channels.get(self.channel(user_id))
        return len(state.sockets) if state else 0

    def channel(self, user_id: ObjectId) -> str:
        return notifications.channel(self.prefix, user_id)

    def subscribed_channels(self) -> set[str]:
        return {name for name, state in self._channels.items() if state.subscribed}

    async def join(self, socket: Subscriber) -> bool:
        """Add `socket`; True once its channel is subscribed, False if Redis did not confirm
        in time (the socket is then sent `resync` once it does)."""
        self._open.add(socket)
        self._closed_event.clear()
        name = self.channel(socket.user_id)
        state = self._channels.setdefault(name, Channel())
        state.sockets.add(socket)
        self._start_reader()
        waiter = await self._sync(name)
        if waiter is not None:
            try:
                await asyncio.wait_for(asyncio.shield(waiter), self.confirm_timeout)
                return True
            except TimeoutError:
                pass
        elif state.subscribed and state.acked >= state.sent:
            return True
        socket.needs_resync = True
        return False

    def leave(self, socket: Subscriber) -> None:
        """Take `socket` out of its channel (it receives nothing more); idempotent."""
        name = self.channel(socket.user_id)
        state = self._channels.get(name)
        if state is None or socket not in state.sockets:
            return
        state.sockets.discard(socket)
        if not state.sockets:
            self._spawn(self._sync_quietly(name))

    def closed(self, socket: Subscriber) -> None:
        """The socket's connection is gone."""
        self.leave(socket)
        self._open.discard(socket)
        if not self._open:
            self._closed_event.set()

    # -- subscriptions ------------------------------------------------------------------
    async def _sync(self, name: str) -> asyncio.Future[None] | None:
        """Bring the subscription of `name` in line with whether it has sockets; a future that
        resolves once Redis has confirmed the subscription, when that is still to come."""
        async with self._send_lock:
            state = self._channels.get(name)
            if state is None:
                return None
            wanted = bool(state.sockets)
            pubsub = self._pubsub  # None while not connected: _connect subscribes then
            try:
                if pubsub is not None and wanted and not state.subscribed:
                    await pubsub.subscribe(name)
                    state.subscribed, state.sent = True, state.sent + 1
                elif pubsub is not None and not wanted and state.subscribed:
                    await pubsub.unsubscribe(name)
                    state.subscribed = False
            except REDIS_FAILURES as exc:
                # The connection is broken: the reader notices, reconnects and subscribes
                # every channel that has sockets then.
                log.warning("notifications: could not (un)subscribe %s: %s", name, exc)
                return None
            if not wanted:
                if not state.subscribed and not state.waiters:
                    self._channels.pop(name, None)
                return None
            if pubsub is not None and state.acked >= state.sent:
                return None
            future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            state.waiters.append((max(state.sent, 1), future))
            return future

    async def _sync_quietly(self, name: str) -> None:
        await self._sync(name)

    def _acknowledged(self, name: str) -> None:
        state = self._channels.get(name)
        if state is None:
            return
        state.acked += 1
        pending = []
        for target, future in state.waiters:
            if state.acked >= target:
                if not future.done():
                    future.set_result(None)
            else:
                pending.append((target, future))
        state.waiters = pending
        if not state.sockets and not state.subscribed and not state.waiters:
            del self._channels[name]  # it was left before Redis confirmed it
            return
        if state.acked >= state.sent:
            for socket in list(state.sockets):
                if socket.needs_resync:
                    socket.needs_resync = False
                    socket.deliver(notifications.encode(notifications.resync()))

    # -- the reader -----------------------------------------------------------------------
    def _start_reader(self) -> None:
        if self._reader is None and not self.closing:
            self._reader = asyncio.create_task(self._run())

    async def _run(self) -> None:
        backoff = MIN_BACKOFF
        while not self.closing:
            try:
                await self._connect()
                backoff = MIN_BACKOFF
                await self._read()
            except REDIS_FAILURES as exc:
                log.warning("notifications: redis connection lost, reconnecting: %s", exc)
            except Exception:
                # The reader must outlive any surprise; each is logged with its trace.
                log.exception("notifications: reader failed, reconnecting")
            finally:
                self._drop_connection()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, MAX_BACKOFF)
            self.reconnects += 1

    async def _connect(self) -> None:
        client = self._new_client()
        pubsub = client.pubsub()
        self._client = client
        await pubsub.connect()  # type: ignore[no-untyped-call]
        async with self._send_lock:
            self._pubsub = pubsub
            names = [name for name, state in self._channels.items() if state.sockets]
            if names:
                await pubsub.subscribe(*names)
                for name in names:
                    state = self._channels[name]
                    state.subscribed, state.sent = True, state.sent + 1
        if names:
            log.info("notifications: subscribed to %d channels", len(names))

    async def _read(self) -> None:
        pubsub = self._pubsub
        assert pubsub is not None
        quiet_rounds = 0
        while True:
            event = await pubsub.get_message(timeout=QUIET_SECONDS)
            if event is None:
                quiet_rounds += 1
                if quiet_rounds > 1:
                    raise ConnectionError("redis did not answer a PING")
                await pubsub.ping()
                continue
            quiet_rounds = 0
            self._dispatch(event)

    def _dispatch(self, event: dict[str, Any]) -> None:
        kind = event["type"]
        if kind == "subscribe":
            self._acknowledged(channel_text(event["channel"]))
            return
        if kind != "message":
            return
        state = self._channels.get(channel_text(event["channel"]))
        if state is None or not state.sockets:
            return
        data: bytes = event["data"]
        if data.startswith(notifications.REVOKED_PREFIX):
            token_id = json.loads(data).get("token_id")
            for socket in list(state.sockets):
                if socket.token_id == token_id:
                    socket.shut(1008, "token revoked")
            return
        text = data.decode("utf-8")
        for socket in list(state.sockets):
            socket.deliver(text)

    def _drop_connection(self) -> None:
        """Forget the connection: every channel is unsubscribed as far as Redis knows, and its
        sockets will need a resync once it is subscribed again."""
        pubsub, client = self._pubsub, self._client
        self._pubsub, self._client = None, None
        for name, state in list(self._channels.items()):
            state.subscribed, state.sent, state.acked = False, 0, 0
            for _target, future in state.waiters:
                if not future.done():
                    future.set_result(None)  # its socket is marked for a resync below
            state.waiters = []
            for socket in state.sockets:
                socket.needs_resync = True
            if not state.sockets:
                del self._channels[name]
        if pubsub is not None and client is not None:
            self._spawn(close_quietly(pubsub, client))

    def _spawn(self, work: Any) -> None:
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- shutdown ---------------------------------------------------------------------------
    async def close_sockets(self, *, grace: float) -> None:
        """Close every socket with 1001 (going away: reconnect elsewhere) and wait at most
        `grace` seconds for their closing handshakes."""
        self.closing = True
        for socket in list(self._open):
            socket.shut(GOING_AWAY, "server shutting down")
        if self._open:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closed_event.wait(), grace)

    async def close(self) -> None:
        self.closing = True
        for socket in list(self._open):
            socket.shut(GOING_AWAY, "server shutting down")
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)
        self._drop_connection()
        await asyncio.gather(*self._tasks, return_exceptions=True)
