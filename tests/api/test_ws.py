"""GET /ws end to end: real instances, a real Redis between them, real Celery workers."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import signal
import socket
import time
import uuid

import pytest
import redis
from bson import ObjectId
from redis.asyncio import Redis
from tornado.httpclient import HTTPClientError, HTTPRequest
from tornado.websocket import WebSocketClientConnection, websocket_connect

from scripts.local_services import free_port, redis_server
from server.domain import jobs
from server.domain.tokens import TokenService
from server.infra import notifications
from server.infra.settings import PROJECT_ROOT
from tests.api.test_openapi import assert_matches
from tests.conftest import TEST_SECRET, Api, another_instance, error_of, make_settings
from tests.web.test_main import instance, wait_until_healthy  # noqa: F401
from tests.worker.test_jobs import create, finished_days_ago, worker  # noqa: F401

SPEC = json.loads((PROJECT_ROOT / "server" / "openapi.json").read_text())
WAIT = 30.0  # the longest any single expected message or state may take to show up
OPENED: list[Client] = []


@pytest.fixture(autouse=True)
def _close_every_client():
    """Unclosed client connections warn when collected, which fails whichever test runs then."""
    yield
    while OPENED:
        OPENED.pop().close()


class Client:
    """A WebSocket client that takes every message off the wire at once (into an unbounded
    queue), so it is never the slow client the server disconnects."""

    def __init__(self) -> None:
        self.messages: asyncio.Queue[dict | None] = asyncio.Queue()
        self.conn: WebSocketClientConnection | None = None
        self.seen: list[dict] = []

    def on_message(self, raw: str | bytes | None) -> None:
        self.messages.put_nowait(None if raw is None else json.loads(raw))

    async def next(self, within: float = WAIT) -> dict | None:
        message = await asyncio.wait_for(self.messages.get(), within)
        if message is not None:
            assert_matches(SPEC, "Notification", message)
            self.seen.append(message)
        return message

    async def until(self, wanted, within: float = WAIT) -> dict:
        """The first message for which `wanted(message)` holds (earlier ones are kept in
        `seen`)."""
        deadline = time.monotonic() + within
        while True:
            message = await self.next(max(0.1, deadline - time.monotonic()))
            assert message is not None, f"closed {self.close_code}: {self.seen}"
            if wanted(message):
                return message

    async def closed(self, within: float = WAIT) -> int | None:
        """Wait for the server to close the socket; its close code."""
        deadline = time.monotonic() + within
        while await self.next(max(0.1, deadline - time.monotonic())) is not None:
            pass
        return self.close_code

    @property
    def close_code(self) -> int | None:
        return self.conn.close_code if self.conn else None

    @property
    def close_reason(self) -> str | None:
        return self.conn.close_reason if self.conn else None

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()


def ws_url(base_url: str, query: str = "") -> str:
    return base_url.replace("http://", "ws://", 1) + "/ws" + query


async def open_socket(base_url: str, token: str | None = None, *, query: str = "",
                      headers: dict[str, str] | None = None) -> Client:
    """A connected client that has received its `hello`."""
    client = Client()
    OPENED.append(client)
    all_headers = dict(headers or {})
    if token is not None:
        all_headers["Authorization"] = f"Bearer {token}"
    request = HTTPRequest(ws_url(base_url, query), headers=all_headers, request_timeout=WAIT)
    client.conn = await websocket_connect(request, on_message_callback=client.on_message)
    hello = await client.next()
    assert hello is not None
    assert hello["type"] == "hello", hello
    return client


async def refused(base_url: str, token: str | None = None, **kwargs) -> tuple[int, str]:
    """The (status, message) of a JSON error answering the handshake instead of 101."""
    with pytest.raises(HTTPClientError) as refusal:
        await open_socket(base_url, token, **kwargs)
    response = refusal.value.response
    assert response is not None
    assert response.headers["Content-Type"].startswith("application/json")
    body = json.loads(response.body)
    assert body["error"]["status"] == refusal.value.code
    return refusal.value.code, body["error"]["message"]


async def user_of(token: str) -> str:
    payload = token.split(".")[0]
    return base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)).decode().split(".")[0]


async def subscribers(redis_url: str, prefix: str, user_id: str) -> int:
    client = Redis.from_url(redis_url)
    try:
        found = await client.pubsub_numsub(notifications.channel(prefix, user_id))
    finally:
        await client.aclose()
    return int(found[0][1])


async def eventually(check, within: float = WAIT) -> None:
    """Wait until `await check()` is true (polling), failing after `within` seconds."""
    deadline = time.monotonic() + within
    while not await check():
        assert time.monotonic() < deadline, "condition never became true"
        await asyncio.sleep(0.05)


async def metric(api: Api, name: str) -> float:
    text = (await api.get("/metrics")).body.decode()
    found = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
    assert found, name
    return float(found.group(1))


def todo_event(action):
    return lambda m: m["type"] == "todo" and m["action"] == action


# -- todos, from another instance -----------------------------------------------------------------
@pytest.mark.gen_test(timeout=90)
async def test_a_client_sees_its_todo_changes_made_on_another_instance_and_only_its_own(
    api, base_url, settings
):
    alice = await api.register("alice")
    bob = await api.register("bob")
    alices = await open_socket(base_url, alice)
    bobs = await open_socket(base_url, bob)
    async with another_instance(settings) as other:
        created = await other.post("/todo", token=alice, json_body={"content": "buy milk"})
        assert created.status == 201
        todo_id = created.json["id"]
        message = await alices.until(todo_event("created"))
        assert message["todo"] == created.json

        bobs_todo = await other.post("/todo", token=bob, json_body={"content": "bob's"})
        assert (await bobs.until(todo_event("created")))["todo"] == bobs_todo.json

        changed = await other.patch(f"/todo/{todo_id}", token=alice,
                                    json_body={"content": "buy oat milk"})
        assert (await alices.until(todo_event("updated")))["todo"] == changed.json
        finished = await other.patch(f"/todo/{todo_id}", token=alice,
                                     json_body={"is_finished": True})
        assert (await alices.until(todo_event("finished")))["todo"] == finished.json
        reopened = await other.patch(f"/todo/{todo_id}", token=alice,
                                     json_body={"is_finished": False})
        assert (await alices.until(todo_event("updated")))["todo"] == reopened.json
        put = await other.put(f"/todo/{todo_id}/finish", token=alice)
        assert (await alices.until(todo_event("finished")))["todo"] == put.json
        assert (await other.delete(f"/todo/{todo_id}", token=alice)).status == 204
        deleted = await alices.until(todo_event("deleted"))
        assert deleted["todo"] == {"id": todo_id}

    # Every message alice got, in order: exactly her own changes, nothing of bob's.
    assert [(m["type"], m.get("action")) for m in alices.seen] == [
        ("hello", None), ("todo", "created"), ("todo", "updated"), ("todo", "finished"),
        ("todo", "updated"), ("todo", "finished"), ("todo", "deleted"),
    ]
    assert bobs_todo.json["id"] not in json.dumps(alices.seen)
    alices.close()
    bobs.close()


@pytest.mark.gen_test(timeout=60)
async def test_an_idempotent_replay_changes_nothing_and_says_nothing(api, base_url):
    token = await api.register("alice")
    client = await open_socket(base_url, token)
    key = {"Idempotency-Key": "once"}
    first = await api.post("/todo", token=token, json_body={"content": "x"}, headers=key)
    again = await api.post("/todo", token=token, json_body={"content": "x"}, headers=key)
    assert again.headers["Idempotent-Replayed"] == "true"
    await client.until(todo_event("created"))
    marker = await api.post("/todo", token=token, json_body={"content": "marker"})
    second = await client.until(todo_event("created"))
    assert second["todo"]["id"] == marker.json["id"] != first.json["id"]
    client.close()


@pytest.mark.gen_test(timeout=60)
async def test_ping_is_answered_and_the_query_token_works(api, base_url):
    token = await api.register("alice")
    client = await open_socket(base_url, query=f"?access_token={token}")
    await client.conn.write_message(json.dumps({"type": "ping"}))
    await client.conn.write_message("not json, ignored")
    assert (await client.until(lambda m: m["type"] != "hello"))["type"] == "pong"
    client.close()


# -- refusals before the upgrade ------------------------------------------------------------------
@pytest.mark.gen_test(timeout=60)
async def test_missing_bad_expired_and_revoked_tokens_are_a_json_401_before_the_upgrade(
    api, base_url, services
):
    token = await api.register("alice")
    expired, _ = TokenService(secret=TEST_SECRET, ttl=-60, guard=services.redis,
                              db=services.db).issue(ObjectId(await user_of(token)))
    assert await refused(base_url) == (401, "missing, invalid, expired or revoked bearer token")
    for bad in ("nonsense", token + "x", expired):
        assert (await refused(base_url, bad))[0] == 401
        assert (await refused(base_url, query=f"?access_token={bad}"))[0] == 401
    assert (await refused(base_url, query="?access_token="))[0] == 401
    revoked = await api.register("bob")
    assert (await api.delete("/tokens/current", token=revoked)).status == 204
    assert (await refused(base_url, revoked))[0] == 401
    assert (await refused(base_url, token, query="?foo=1")) == (
        400, "unknown query parameter 'foo'")


@pytest.mark.gen_test(timeout=60)
async def test_a_plain_get_is_400_other_methods_405_foreign_origins_403(api, base_url):
    token = await api.register("alice")
    plain = await api.get("/ws", token=token)
    assert error_of(plain)[0] == 400
    assert "WebSocket" in error_of(plain)[1]
    assert error_of(await api.post("/ws", token=token))[0] == 405
    evil = {"Origin": "https://evil.example"}
    assert (await refused(base_url, token, headers=evil))[0] == 403
    host = base_url.removeprefix("http://")
    same = await open_socket(base_url, token, headers={"Origin": f"http://{host}"})
    same.close()


@pytest.mark.gen_test(timeout=60)
async def test_configured_origins_and_the_per_user_limit(mongo_uri, redis_url):
    settings = make_settings(mongo_uri, redis_url, ws_max_per_user=2,
                             ws_origins="https://app.example, https://other.example/")
    async with another_instance(settings) as api:
        token = await api.register("alice")
        first = await open_socket(api.base_url, token,
                                  headers={"Origin": "https://app.example"})
        second = await open_socket(api.base_url, token,
                                   headers={"Origin": "https://other.example"})
        assert (await refused(api.base_url, token))[0] == 429
        other_user = await open_socket(api.base_url, await api.register("bob"))
        first.close()
        await first.closed()
        await eventually(lambda: _can_open(api.base_url, token))
        second.close()
        other_user.close()


async def _can_open(base_url: str, token: str) -> bool:
    try:
        client = await open_socket(base_url, token)
    except HTTPClientError:
        return False
    client.close()
    return True


# -- logout, drop, heartbeats ---------------------------------------------------------------------
@pytest.mark.gen_test(timeout=60)
async def test_logout_closes_the_sockets_of_that_token_only(api, base_url):
    token = await api.register("alice")
    other_token = (await api.post("/tokens", json_body={"username": "alice",
                                                        "password": "correct horse"}))
    kept = await open_socket(base_url, other_token.json["token"])
    gone = await open_socket(base_url, token)
    assert (await api.delete("/tokens/current", token=token)).status == 204
    assert await gone.closed() == 1008
    assert gone.close_reason == "token revoked"
    created = await api.post("/todo", token=other_token.json["token"],
                             json_body={"content": "still told"})
    assert (await kept.until(todo_event("created")))["todo"] == created.json
    kept.close()


class RawSocket:
    """A client that completes the handshake and then never reads: it answers no ping and
    lets the server's messages pile up (with `rcvbuf`, in a tiny receive buffer)."""

    def __init__(self, port: int, token: str, *, rcvbuf: int | None = None) -> None:
        self.port, self.token, self.rcvbuf = port, token, rcvbuf
        self.sock = socket.socket()

    async def open(self) -> None:
        if self.rcvbuf is not None:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.rcvbuf)
        self.sock.setblocking(False)
        loop = asyncio.get_running_loop()
        await loop.sock_connect(self.sock, ("127.0.0.1", self.port))
        key = base64.b64encode(os.urandom(16)).decode()
        await loop.sock_sendall(self.sock, (
            f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            f"Sec-WebSocket-Version: 13\r\nAuthorization: Bearer {self.token}\r\n\r\n"
        ).encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = await asyncio.wait_for(loop.sock_recv(self.sock, 1), WAIT)
            assert chunk, head
            head += chunk
        assert head.startswith(b"HTTP/1.1 101"), head

    async def until_closed_by_server(self) -> None:
        """Read (and drop) everything until the server has closed the connection."""
        loop = asyncio.get_running_loop()
        deadline = time.monotonic() + WAIT
        while True:
            try:
                chunk = await asyncio.wait_for(loop.sock_recv(self.sock, 65536),
                                               max(0.1, deadline - time.monotonic()))
            except ConnectionResetError:
                return
            if not chunk:
                return

    def drop(self) -> None:
        """Gone without a closing handshake, as when a network or a process dies."""
        linger_zero = b"\x01\x00\x00\x00" + b"\x00\x00\x00\x00"  # RST, not FIN
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger_zero)
        self.sock.close()


def port_of(base_url: str) -> int:
    return int(base_url.rsplit(":", 1)[1])


@pytest.mark.gen_test(timeout=90)
async def test_a_dropped_connection_is_cleaned_up_and_unsubscribed(api, base_url, settings):
    token = await api.register("alice")
    user = await user_of(token)
    raw = RawSocket(port_of(base_url), token)
    await raw.open()
    client = await open_socket(base_url, token)
    assert await subscribers(settings.redis_url, settings.redis_prefix, user) == 1
    assert await metric(api, "todo_ws_open_sockets") == 2
    raw.drop()
    client.conn.protocol.stream.close()  # the Tornado client, cut off as abruptly

    async def cleaned_up() -> bool:
        return (await metric(api, "todo_ws_open_sockets") == 0
                and await subscribers(settings.redis_url, settings.redis_prefix, user) == 0)

    await eventually(cleaned_up)


@pytest.mark.gen_test(timeout=120)
async def test_a_client_that_stops_reading_is_disconnected_and_memory_stays_bounded(
    mongo_uri, redis_url
):
    settings = make_settings(mongo_uri, redis_url, ws_queue_size=4)
    async with another_instance(settings) as api:
        token = await api.register("sloth")
        user = await user_of(token)
        raw = RawSocket(port_of(api.base_url), token, rcvbuf=1024)
        await raw.open()
        await eventually(lambda: _subscribed(settings, user, 1))
        publisher = Redis.from_url(settings.redis_url)
        padding = "x" * 16_000
        try:
            for _ in range(400):
                for _ in range(10):
                    event = notifications.encode(notifications.message("pong", pad=padding))
                    await publisher.publish(notifications.channel(settings.redis_prefix, user),
                                            event)
                await asyncio.sleep(0.01)
                # However far behind the client is, the instance holds a bounded queue.
                assert await metric(api, "todo_ws_queued_messages") <= 4
                if await metric(api, "todo_ws_slow_disconnects_total") == 1:
                    break
        finally:
            await publisher.aclose()
        assert await metric(api, "todo_ws_slow_disconnects_total") == 1
        assert await metric(api, "todo_ws_queued_messages") == 0
        await eventually(lambda: _subscribed(settings, user, 0))
        await raw.until_closed_by_server()
        await eventually(lambda: _metric_is(api, "todo_ws_open_sockets", 0))
        raw.sock.close()
        # A client that keeps up is not affected.
        client = await open_socket(api.base_url, token)
        created = await api.post("/todo", token=token, json_body={"content": "fast"})
        assert (await client.until(todo_event("created")))["todo"] == created.json


async def _subscribed(settings, user: str, count: int) -> bool:
    return await subscribers(settings.redis_url, settings.redis_prefix, user) == count


async def _metric_is(api: Api, name: str, value: float) -> bool:
    return await metric(api, name) == value


@pytest.mark.gen_test(timeout=90)
async def test_a_client_that_answers_no_ping_is_closed(mongo_uri, redis_url):
    settings = make_settings(mongo_uri, redis_url, ws_ping_interval=1.0, ws_ping_timeout=1.0)
    async with another_instance(settings) as api:
        token = await api.register("silent")
        user = await user_of(token)
        raw = RawSocket(port_of(api.base_url), token)
        await raw.open()
        alive = await open_socket(api.base_url, token)  # answers pings: stays open
        await raw.until_closed_by_server()
        raw.sock.close()
        await eventually(lambda: _metric_is(api, "todo_ws_open_sockets", 1))
        assert await subscribers(settings.redis_url, settings.redis_prefix, user) == 1
        created = await api.post("/todo", token=token, json_body={"content": "still here"})
        assert (await alive.until(todo_event("created")))["todo"] == created.json


# -- jobs, run by a real worker process -----------------------------------------------------------
@pytest.mark.gen_test(timeout=150)
async def test_a_client_follows_its_purge_job_from_queued_to_done(
    api, base_url, worker  # noqa: F811
):
    token = await api.register("alice")
    for i in range(3):
        await create(api, token, f"old {i}", finished=True)
    kept = await create(api, token, "open")
    client = await open_socket(base_url, token)
    worker.start()
    reply = await api.post("/jobs", token=token,
                           json_body={"type": "purge", "older_than_days": 0})
    assert reply.status == 202
    job_id = reply.json["id"]
    finished = await client.until(
        lambda m: m["type"] == "job" and m["job"]["status"] in (jobs.DONE, jobs.FAILED),
        within=120,
    )
    assert finished["job"]["status"] == jobs.DONE, worker.log()
    states = [m["job"] for m in client.seen if m["type"] == "job"]
    assert {job["id"] for job in states} == {job_id}
    assert states[0] == reply.json
    assert [s["status"] for s in states] == (
        [jobs.QUEUED] + [jobs.RUNNING] * (len(states) - 2) + [jobs.DONE])
    progress = [s["progress"] for s in states if s["status"] == jobs.RUNNING]
    assert {"done": 0, "total": 3} in progress
    assert {"done": 3, "total": 3} in progress
    assert states[-1] == (await api.get(f"/jobs/{job_id}", token=token)).json
    bulk = [m for m in client.seen if m["type"] == "todos"]
    assert [(m["action"], m["count"]) for m in bulk] == [("purged", 3)]
    assert [t["id"] for t in (await api.get("/todo", token=token)).json["data"]] == [kept]


@pytest.mark.gen_test(timeout=60)
async def test_a_job_the_queue_refuses_is_told_queued_then_failed(mongo_uri, redis_url):
    settings = make_settings(mongo_uri, redis_url,
                             broker_url=f"redis://127.0.0.1:{free_port()}/1")
    async with another_instance(settings) as api:
        token = await api.register("alice")
        client = await open_socket(api.base_url, token)
        reply = await api.post("/jobs", token=token,
                               json_body={"type": "purge", "older_than_days": 1})
        assert reply.status == 503
        failed = await client.until(lambda m: m["type"] == "job"
                                    and m["job"]["status"] == jobs.FAILED)
        assert failed["job"]["error"] == jobs.QUEUE_UNAVAILABLE
        assert [m["job"]["status"] for m in client.seen if m["type"] == "job"] == [
            jobs.QUEUED, jobs.FAILED]


# -- Redis lost and back --------------------------------------------------------------------------
@pytest.mark.gen_test(timeout=150)
async def test_after_a_redis_restart_the_socket_gets_resync_and_messages_flow_again(
    mongo_uri, tmp_path
):
    server = redis_server(tmp_path / "redis", free_port())
    server.start()
    try:
        settings = make_settings(mongo_uri, f"redis://127.0.0.1:{server.port}/0")
        async with another_instance(settings) as api, another_instance(settings) as writer:
            token = await api.register("survivor")
            client = await open_socket(api.base_url, token)
            before = await writer.post("/todo", token=token, json_body={"content": "before"})
            assert (await client.until(todo_event("created")))["todo"] == before.json

            server.stop()
            during = await writer.post("/todo", token=token, json_body={"content": "during"})
            assert during.status == 201  # the write is the truth; its message is lost
            server.start()
            await client.until(lambda m: m["type"] == "resync")
            assert await metric(api, "todo_ws_redis_reconnects_total") >= 1
            assert await metric(writer, "todo_notify_publish_failures_total") >= 1
            # The writer may still be cooling down from the outage: its first publishes may be
            # skipped, but soon one gets through.
            for attempt in range(60):
                after = await writer.post("/todo", token=token,
                                          json_body={"content": f"after {attempt}"})
                try:
                    message = await client.until(todo_event("created"), within=1.0)
                except TimeoutError:
                    continue
                assert message["todo"] == after.json
                break
            else:
                raise AssertionError(f"no message after the restart: {client.seen}")
            assert "during" not in json.dumps(client.seen)
    finally:
        server.stop()


# -- shutdown -------------------------------------------------------------------------------------
@pytest.mark.gen_test(timeout=90)
async def test_sigterm_closes_the_sockets_with_going_away_and_exits_zero(instance):  # noqa: F811
    process, port = instance
    api = Api(f"http://127.0.0.1:{port}")
    try:
        await wait_until_healthy(api)
        token = await api.register("leaving")
        client = await open_socket(api.base_url, token)
        process.send_signal(signal.SIGTERM)
        assert await client.closed() == 1001
        assert client.close_reason == "server shutting down"
        for _ in range(600):
            if process.poll() is not None:
                break
            await asyncio.sleep(0.05)
        assert process.returncode == 0
    finally:
        api.close()


# -- the workers' publisher ------------------------------------------------------------------------
def test_a_worker_publishes_a_bulk_change_as_one_message(redis_url):
    owner, prefix = ObjectId(), f"todo-test:{uuid.uuid4().hex[:8]}:"
    with redis.Redis.from_url(redis_url) as listener_client:
        listener = listener_client.pubsub()
        listener.subscribe(notifications.channel(prefix, owner))
        assert listener.get_message(timeout=WAIT)["type"] == "subscribe"
        publisher = notifications.WorkerPublisher(redis_url, prefix=prefix, timeout=1.0)
        try:
            assert publisher.todos_changed(owner, notifications.IMPORTED, 7)
        finally:
            publisher.close()
        message = json.loads(listener.get_message(timeout=WAIT)["data"])
        listener.close()
    assert_matches(SPEC, "Notification", message)
    assert (message["type"], message["action"], message["count"]) == ("todos", "imported", 7)


def test_a_worker_without_redis_loses_the_message_quietly_and_cools_down():
    publisher = notifications.WorkerPublisher(f"redis://127.0.0.1:{free_port()}/0",
                                              prefix="todo-test:", timeout=0.2)
    try:
        assert not publisher.todos_changed(ObjectId(), notifications.PURGED, 1)
        assert not publisher.todos_changed(ObjectId(), notifications.PURGED, 1)  # not tried
        assert publisher.failures == 2
    finally:
        publisher.close()
