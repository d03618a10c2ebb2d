"""GET /ws end to end: real instances, a real Redis between them, real Celery workers."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import os
import re
import signal
import socket
import time

import pytest
from bson import ObjectId
from redis.asyncio import Redis
from tornado.httpclient import HTTPClientError, HTTPRequest
from tornado.websocket import WebSocketClientConnection, websocket_connect

from scripts.local_services import free_port, redis_server
from server import jobs, notifications
from server.settings import PROJECT_ROOT
from server.tokens import TokenService
from tests.conftest import TEST_SECRET, Api, another_instance, error_of, make_settings
from tests.test_jobs import create, finished_days_ago, worker  # noqa: F401
from tests.test_main import instance, wait_until_healthy  # noqa: F401
from tests.test_openapi import assert_matches

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

    async def next(self, timeout: float = WAIT) -> dict | None:
        message = await asyncio.wait_for(self.messages.get(), timeout)
        if message is not None:
            assert_matches(SPEC, "Notification", message)
            self.seen.append(message)
        return message

    async def until(self, wanted, timeout: float = WAIT) -> dict:
        """The first message for which `wanted(message)` holds (earlier ones are kept in
        `seen`)."""
        deadline = time.monotonic() + timeout
        while True:
            message = await self.next(max(0.1, deadline - time.monotonic()))
            assert message is not None, f"closed {self.close_code}: {self.seen}"
            if wanted(message):
                return message

    async def closed(self, timeout: float = WAIT) -> int | None:
        """Wait for the server to close the socket; its close code."""
        deadline = time.monotonic() + timeout
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
    assert hello is not None and hello["type"] == "hello", hello
    return client


async def refused(base_url: str, token: str | None = None, **kwargs) -> tuple[int, str]:
    """The (status, message) of a JSON error answering the handshake instead of 101."""
    with pytest.raises(HTTPClientError) as refusal:
        client = await open_socket(base_url, token, **kwargs)
        client.close()
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


async def eventually(check, timeout: float = WAIT) -> None:
    """Wait until `await check()` is true (polling), failing after `timeout`."""
    deadline = time.monotonic() + timeout
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


# -- todos, from another instance ------------------------------------------------------------
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


# -- refusals before the upgrade ---------------------------------------------------------------
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


# -- logout, drop, heartbeats --------------------------------------------------------------------
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
