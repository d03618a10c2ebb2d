"""One Redis connection that carries every request's hot read at once, pipelined.

Each authenticated request reads Redis once (its token's revocation, and for the first page the
cached page: one MGET). Through redis-py's pool that read cost more CPU than the rest of the
request's own code: a connection checked out and back, a retry wrapper, a timeout context, per
command. Here a request writes its command on a connection that stays open and waits for its
reply: Redis answers in order, so replies go to the waiting requests in the order they asked.

A reply that does not come within `timeout` (Redis hangs) fails every request waiting on the
connection and closes it: the next request opens a new one. Failures are redis-py's exceptions,
so RedisGuard treats them as any other Redis failure (the request falls back to MongoDB). A
connection Redis closes while nobody waits is reported through `on_lost` at once: a restarted
Redis may have missed writes meanwhile, and the guard must hear of the outage (with redis-py's
pool, the first use of a dead connection fails and tells it) before a read succeeds again.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from typing import Any, cast

import hiredis
from redis.connection import parse_url
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

LostHook = Callable[[BaseException], None]


def pack_command(*args: str | bytes) -> bytes:
    """The RESP encoding of one command (an array of bulk strings)."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        raw = arg.encode() if isinstance(arg, str) else arg
        parts.append(b"$%d\r\n%b\r\n" % (len(raw), raw))
    return b"".join(parts)


class _Waiting:
    __slots__ = ("deadline", "future")

    def __init__(self, future: asyncio.Future[Any], deadline: float) -> None:
        self.future = future
        self.deadline = deadline


class _Connection(asyncio.Protocol):
    """The protocol of one connection: replies are matched to requests in order."""

    def __init__(self, timeout: float, on_lost: LostHook | None) -> None:
        self.timeout = timeout
        self.on_lost = on_lost
        self.reader = hiredis.Reader()
        self.waiting: deque[_Waiting] = deque()
        self.transport: asyncio.Transport | None = None
        self.lost: BaseException | None = None
        self._watchdog: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not subclasses of asyncio's: no isinstance check.
        self.transport = cast(asyncio.Transport, transport)

    def send(self, command: bytes) -> asyncio.Future[Any]:
        if self.lost is not None or self.transport is None:
            raise RedisConnectionError(f"redis connection lost: {self.lost}")
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self.waiting.append(_Waiting(future, time.monotonic() + self.timeout))
        self.transport.write(command)
        if self._watchdog is None:
            self._watchdog = loop.call_later(self.timeout, self._check_deadline)
        return future

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        while self.waiting:
            reply = self.reader.gets()
            if reply is False:
                return
            future = self.waiting.popleft().future
            if future.done():  # its request was cancelled (the client went away)
                continue
            if isinstance(reply, hiredis.ReplyError):
                future.set_exception(ResponseError(str(reply)))
            else:
                future.set_result(reply)

    def _check_deadline(self) -> None:
        self._watchdog = None
        if not self.waiting:
            return
        late_by = time.monotonic() - self.waiting[0].deadline
        if late_by >= 0:
            self._fail(RedisTimeoutError(f"no reply from redis within {self.timeout}s"))
            return
        loop = asyncio.get_running_loop()
        self._watchdog = loop.call_later(-late_by, self._check_deadline)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.lost is not None:
            return  # closed by us, after a timeout or at shutdown
        error = RedisConnectionError(f"redis closed the connection: {exc}")
        unheard = not self.waiting  # waiting reads fail with it, and their caller hears it
        self._fail(error)
        if unheard and self.on_lost is not None:
            self.on_lost(error)

    def close(self) -> None:
        self._fail(RedisConnectionError("closed"))

    def _fail(self, exc: BaseException) -> None:
        if self.lost is None:
            self.lost = exc
        while self.waiting:
            future = self.waiting.popleft().future
            if not future.done():
                future.set_exception(exc)
        if self.transport is not None:
            self.transport.close()
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None


class PipelinedReads:
    """Reads over one shared connection, opened on first use and again after a failure."""

    def __init__(self, url: str, *, timeout: float) -> None:
        self.options: dict[str, Any] = parse_url(url)  # type: ignore[no-untyped-call]
        self.timeout = timeout
        # Told when Redis closes the connection while no read waits (RedisGuard sets it).
        self.on_lost: LostHook | None = None
        self._connection: _Connection | None = None
        self._connecting: asyncio.Future[_Connection] | None = None

    @staticmethod
    def supports(url: str) -> bool:
        """Plain TCP and Unix sockets; TLS (rediss://) stays with redis-py."""
        return url.startswith(("redis://", "unix://"))

    async def mget(self, *keys: str) -> list[Any]:
        connection = self._connection
        if connection is None or connection.lost is not None:
            connection = await self._connect()
        reply: list[Any] = await connection.send(pack_command("MGET", *keys))
        return reply

    async def _connect(self) -> _Connection:
        # Requests arriving while it connects share the one attempt.
        if self._connecting is None:
            self._connecting = asyncio.ensure_future(self._open())
        connecting = self._connecting
        try:
            return await asyncio.shield(connecting)
        finally:
            if connecting.done() and self._connecting is connecting:
                self._connecting = None

    async def _open(self) -> _Connection:
        loop = asyncio.get_running_loop()

        def protocol() -> _Connection:
            return _Connection(self.timeout, self.on_lost)

        try:
            async with asyncio.timeout(self.timeout):
                if "path" in self.options:
                    _, connection = await loop.create_unix_connection(
                        protocol, self.options["path"])
                else:
                    _, connection = await loop.create_connection(
                        protocol, self.options.get("host", "localhost"),
                        self.options.get("port", 6379))
                try:
                    await self._handshake(connection)
                except BaseException:
                    connection.close()
                    raise
        except (OSError, TimeoutError) as exc:
            raise RedisConnectionError(f"cannot connect to redis: {exc}") from exc
        self._connection = connection
        return connection

    async def _handshake(self, connection: _Connection) -> None:
        password, username = self.options.get("password"), self.options.get("username")
        if password is not None:
            credentials = (username, password) if username else (password,)
            await connection.send(pack_command("AUTH", *credentials))
        if self.options.get("db"):
            await connection.send(pack_command("SELECT", str(self.options["db"])))

    async def close(self) -> None:
        if self._connecting is not None:
            self._connecting.cancel()
        if self._connection is not None:
            self._connection.close()
        self._connection = None
