"""redis-py's asyncio connections, with a reset connection reported as a Redis failure.

On uvloop (the instances' event loop), writing to a transport that the peer reset while the
connection sat idle in the pool raises RuntimeError ("the handler is closed"), not OSError.
redis-py disconnects the connection and lets the RuntimeError through, which is not one of
the failures RedisGuard falls back on: the request answered 500. It happened in the lab on
the first writes after a cut host's link came back (the cache host had reset the connections
it kept to the cut host meanwhile). The pool's own check before handing a connection out
catches a connection the peer closed (end of file), not one it reset.
"""

from __future__ import annotations

from typing import Any

from redis.asyncio import Redis
from redis.asyncio.connection import AbstractConnection, ConnectionPool
from redis.exceptions import ConnectionError as RedisConnectionError


class _ResetIsAConnectionError:
    """Mixed into the class the URL chose (TCP, TLS or Unix socket)."""

    async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        try:
            await super().send_packed_command(command, check_health)  # type: ignore[misc]
        except RuntimeError as exc:  # already disconnected: the next command reconnects
            raise RedisConnectionError(f"redis connection reset: {exc}") from exc


# One subclass per base class: the hub makes a new client each time it reconnects.
_RESET_SAFE: dict[type[AbstractConnection], type[AbstractConnection]] = {}


def _reset_safe(base: type[AbstractConnection]) -> type[AbstractConnection]:
    if base not in _RESET_SAFE:
        _RESET_SAFE[base] = type(base.__name__, (_ResetIsAConnectionError, base), {})
    return _RESET_SAFE[base]


def reset_safe(pool: ConnectionPool) -> ConnectionPool:
    """`pool`, making its connections (from now on) raise ConnectionError when reset."""
    pool.connection_class = _reset_safe(pool.connection_class)
    return pool


def reset_safe_client(client: Redis) -> Redis:
    """`client`, whose own pool makes reset-safe connections."""
    reset_safe(client.connection_pool)
    return client
