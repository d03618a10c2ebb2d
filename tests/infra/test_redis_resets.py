"""A Redis connection reset by the network (a host's link cut and back) is a Redis failure, not a
500, on the instances' event loop (uvloop): the request falls back to MongoDB, and the next one
after the cool-down finds Redis again on a new connection."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct

import pytest
import uvloop

from scripts.local_services import LocalServer
from server.infra.redis_guard import RedisGuard
from server.web.services import redis_client
from tests.conftest import make_settings


class ResettingProxy:
    """Forwards TCP to Redis; reset() ends every connection with a RST to the client side,
    as a peer does that lost the connection's state."""

    def __init__(self, redis_port: int) -> None:
        self.redis_port = redis_port
        self.clients: list[asyncio.StreamWriter] = []
        self.forwarding: set[asyncio.Task[None]] = set()
        self.server: asyncio.Server | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._forward, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def _forward(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.forwarding.add(task)
        self.clients.append(writer)
        upstream_reader, upstream_writer = await asyncio.open_connection(
            "127.0.0.1", self.redis_port)

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError, RuntimeError):
                while data := await source.read(65536):
                    sink.write(data)
        # Either side's end ends the connection (a reset client leaves Redis's side open).
        pipes = [asyncio.ensure_future(pipe(reader, upstream_writer)),
                 asyncio.ensure_future(pipe(upstream_reader, writer))]
        try:
            await asyncio.wait(pipes, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in pipes:
                task.cancel()
            upstream_writer.close()
            writer.transport.abort()

    def reset(self) -> None:
        for writer in self.clients:
            no_linger = struct.pack("ii", 1, 0)  # close() then sends a RST, not a FIN
            writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                                       no_linger)
            writer.transport.abort()
        self.clients.clear()

    async def close(self) -> None:
        self.reset()
        assert self.server is not None
        self.server.close()
        await asyncio.gather(*self.forwarding, return_exceptions=True)
        await self.server.wait_closed()


@pytest.mark.gen_test(timeout=30)
async def test_a_pooled_connection_reset_by_the_network_falls_back_then_recovers(
    mongo_uri: str, own_redis: LocalServer,
):
    # The error only exists there (tests/conftest.py's io_loop): on asyncio's loop this test
    # would pass without the fix.
    assert isinstance(asyncio.get_running_loop(), uvloop.Loop)
    proxy = ResettingProxy(own_redis.port)
    settings = make_settings(mongo_uri, f"redis://127.0.0.1:{await proxy.start()}/0")
    # The pool alone (writes, locks, loads): the pipelined reads hear of a reset at once.
    guard = RedisGuard(redis_client(settings), prefix="reset:", cooldown=0.2)

    async def value() -> object:
        return await guard.run(lambda client: client.get("key"), default="fallback")
    try:
        assert await guard.run(lambda client: client.set("key", "v"), default=None)
        assert await value() == b"v"
        proxy.reset()
        await asyncio.sleep(0.1)  # the loop has seen the reset; the pool has not
        # Before: RuntimeError("unable to perform operation on <TCPTransport closed=True
        # ...>; the handler is closed") out of the guard, a 500.
        assert await value() == "fallback"
        assert guard.errors == 1
        await asyncio.sleep(0.25)  # the cool-down
        assert await value() == b"v"
    finally:
        await guard.close()
        await proxy.close()
