"""A live-notification benchmark: many WebSocket clients, each creating todos and timing how
long the `created` message takes to come back on its socket.

    .venv/bin/python -m scripts.wsbench --url http://127.0.0.1:8000 --users 200 --todos 20

Every user registers, opens one socket (`/ws?access_token=…`) and waits for `hello`; then all
users create their todos at once (each one after the other). A todo's latency runs from just
before its POST to the moment its `created` message arrives: the write, the publish to Redis,
the fan-out by the instance holding the socket and nginx in between. Loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import json
import statistics
import time
import uuid
from typing import Any
from urllib.parse import urlsplit

from tornado.httpclient import AsyncHTTPClient, HTTPRequest
from tornado.websocket import WebSocketClientConnection, websocket_connect

JSON = {"Content-Type": "application/json"}


async def call(http: AsyncHTTPClient, method: str, url: str, body: Any = None,
               token: str | None = None) -> dict[str, Any]:
    headers = dict(JSON)
    if token:
        headers["Authorization"] = f"Bearer {token}"
    reply = await http.fetch(HTTPRequest(url, method=method, headers=headers,
                                         body=None if body is None else json.dumps(body),
                                         request_timeout=60))
    parsed: dict[str, Any] = json.loads(reply.body)
    return parsed


async def register(http: AsyncHTTPClient, base: str, gate: asyncio.Semaphore) -> str:
    name, password = f"ws{uuid.uuid4().hex[:12]}", "benchmark password"
    async with gate:
        await call(http, "POST", f"{base}/users", {"username": name, "password": password})
        issued = await call(http, "POST", f"{base}/tokens",
                            {"username": name, "password": password})
    token: str = issued["token"]
    return token


class Listener:
    """One user's socket: when each of its todos was heard of."""

    def __init__(self) -> None:
        self.heard: dict[str, float] = {}
        self.arrived = asyncio.Event()
        self.conn: WebSocketClientConnection | None = None

    def on_message(self, raw: str | bytes | None) -> None:
        if raw is None:
            return
        message = json.loads(raw)
        if message["type"] == "hello":
            self.arrived.set()
        elif message["type"] == "todo" and message["action"] == "created":
            self.heard[message["todo"]["id"]] = time.perf_counter()
            self.arrived.set()

    async def open(self, base: str, token: str) -> None:
        ws_url = base.replace("http", "ws", 1) + f"/ws?access_token={token}"
        self.conn = await websocket_connect(ws_url, on_message_callback=self.on_message)
        await asyncio.wait_for(self.arrived.wait(), 30)

    async def heard_all(self, ids: list[str]) -> None:
        """Returns once every one of `ids` was heard of (the caller bounds the wait)."""
        while True:
            self.arrived.clear()  # no message can come in between: no await until wait()
            if all(todo_id in self.heard for todo_id in ids):
                return
            await self.arrived.wait()


async def user_run(http: AsyncHTTPClient, base: str, token: str, listener: Listener,
                   todos: int) -> list[tuple[float, float, float | None]]:
    """(POST started, POST answered, message heard or None) for each of the user's todos."""
    sent: dict[str, tuple[float, float]] = {}
    for i in range(todos):
        started = time.perf_counter()
        created = await call(http, "POST", f"{base}/todo", {"content": f"ws bench {i}"}, token)
        sent[created["id"]] = (started, time.perf_counter())
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(30):
            await listener.heard_all(list(sent))
    return [(started, answered, listener.heard.get(todo_id))
            for todo_id, (started, answered) in sent.items()]


def summary(values_ms: list[float]) -> str:
    return (f"p50 {statistics.median(values_ms):.1f} ms, p90 {percentile(values_ms, 0.9):.1f} ms,"
            f" p99 {percentile(values_ms, 0.99):.1f} ms, max {max(values_ms):.1f} ms")


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


async def bench(base: str, users: int, todos: int) -> None:
    AsyncHTTPClient.configure(None, max_clients=max(64, users * 2))
    http = AsyncHTTPClient()
    gate = asyncio.Semaphore(16)
    tokens = await asyncio.gather(*(register(http, base, gate) for _ in range(users)))
    listeners = [Listener() for _ in tokens]
    started = time.perf_counter()
    await asyncio.gather(*(lis.open(base, tok) for lis, tok in zip(listeners, tokens, strict=True)))
    print(f"{users} sockets open (hello received) in {time.perf_counter() - started:.2f}s")
    started = time.perf_counter()
    results = await asyncio.gather(*(
        user_run(http, base, tok, lis, todos)
        for lis, tok in zip(listeners, tokens, strict=True)
    ))
    elapsed = time.perf_counter() - started
    timings = [timing for run in results for timing in run]
    heard = [(started, answered, at) for started, answered, at in timings if at is not None]
    total = users * todos
    print(f"{total} todos created by {users} users in {elapsed:.2f}s "
          f"({total / elapsed:.0f} writes/s); heard on the owner's socket: {len(heard)}, "
          f"missed: {total - len(heard)}")
    print("POST start -> 'created' on the socket:  "
          + summary([(at - started) * 1000 for started, _, at in heard]))
    print("POST start -> its 201 answer:           "
          + summary([(answered - started) * 1000 for started, answered, _ in timings]))
    # Negative when the message beat the HTTP answer back to the client.
    print("201 answer -> 'created' on the socket:  "
          + summary([(at - answered) * 1000 for _, answered, at in heard]))
    for listener in listeners:
        if listener.conn is not None:
            listener.conn.close()
    http.close()


def loopback_only(host: str) -> None:
    """Benchmarks send load: only ever to this machine."""
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise SystemExit(f"wsbench: {host!r} is not a loopback address; benchmarks stay local")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="wsbench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--users", type=int, default=200)
    parser.add_argument("--todos", type=int, default=20, help="todos each user creates")
    args = parser.parse_args(argv)
    loopback_only(urlsplit(args.url).hostname or "")
    asyncio.run(bench(args.url.rstrip("/"), args.users, args.todos))


if __name__ == "__main__":
    main()
