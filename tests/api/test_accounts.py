"""Accounts and bearer tokens: registration, login, logout, and token checks with and without Redis.

Every test talks HTTP to real instances on real sockets, backed by the session's mongod and
redis-server (or, for the Redis outage tests, a redis-server of the test's own that it stops and
restarts). Extra instances share the MongoDB database and Redis prefix of the first, as the
instances of one deployment do.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import re
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from argon2 import PasswordHasher
from bson import ObjectId
from pymongo import monitoring
from tornado.httpserver import HTTPServer
from tornado.testing import bind_unused_port

from scripts.local_services import LocalServer, free_port, redis_server
from server.domain.indexes import ensure_indexes
from server.domain.tokens import TokenService
from server.infra.settings import Settings
from server.web.app import make_app
from server.web.services import Services, mongo_client, open_services
from tests.conftest import Api, Reply, error_of, make_settings

# Run against one instance and through nginx (tests/conftest.py).
pytestmark = pytest.mark.contract

PASSWORD = "correct horse"
FORM = {"Content-Type": "application/x-www-form-urlencoded"}
ISO_8601 = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})")


# -- helpers ------------------------------------------------------------------------------------
class AuthCommands(monitoring.CommandListener):
    """Counts the commands MongoDB receives on the collections a token check could ask."""

    WATCHED = frozenset({"revoked_tokens", "users"})

    def __init__(self) -> None:
        self.by_collection: Counter[str] = Counter()

    @property
    def total(self) -> int:
        return sum(self.by_collection[name] for name in self.WATCHED)

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        key = "collection" if event.command_name == "getMore" else event.command_name
        target = event.command.get(key)
        if isinstance(target, str) and target in self.WATCHED:
            self.by_collection[target] += 1

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


@dataclass
class Instance:
    """One more instance of the service: its own clients, its own port."""

    api: Api
    services: Services
    mongo_commands: AuthCommands


@contextlib.asynccontextmanager
async def instance(settings: Settings, *, drop_database: bool = False) -> AsyncIterator[Instance]:
    """Serve the real app with fresh services on a free port; shut it all down on the way out."""
    commands = AuthCommands()
    services = open_services(settings, mongo=mongo_client(settings, event_listeners=[commands]))
    await ensure_indexes(services.db)
    sock, port = bind_unused_port()
    server = HTTPServer(make_app(services))
    server.add_sockets([sock])
    api = Api(f"http://127.0.0.1:{port}")
    try:
        yield Instance(api, services, commands)
    finally:
        api.close()
        server.stop()
        await server.close_all_connections()
        try:
            if drop_database:
                await services.mongo.drop_database(settings.db_name)
        finally:
            await services.close()


async def checked_without_mongodb(inst: Instance, token: str, attempts: int = 200) -> list[int]:
    """GET /todo until a request's token check asks MongoDB nothing; the statuses seen on the way.

    That is how a test knows an instance is on its Redis fast path (and not on its MongoDB
    fallback) before it checks what that fast path answers.
    """
    statuses = []
    for _ in range(attempts):
        before = inst.mongo_commands.total
        statuses.append((await inst.api.get("/todo", token=token)).status)
        if inst.mongo_commands.total == before:
            return statuses
        await asyncio.sleep(0.05)
    raise AssertionError(f"token checks kept asking MongoDB; statuses {statuses}")


class OwnRedis:
    """A redis-server of the test's own (append-only, so a plain restart keeps its data)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = free_port()
        self.generation = 0
        self.server: LocalServer | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, *, empty: bool = False) -> None:
        """Start on the same port; `empty` starts from a new data directory (all keys lost)."""
        if empty:
            self.generation += 1
        data = self.directory / f"data-{self.generation}"
        self.server = redis_server(data, self.port, append_only=True)
        self.server.start()

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[OwnRedis]:
    redis = OwnRedis(tmp_path / "own-redis")
    redis.start()
    try:
        yield redis
    finally:
        redis.stop()


@pytest.fixture
def own_redis_settings(mongo_uri: str, own_redis: OwnRedis) -> Settings:
    return make_settings(mongo_uri, own_redis.url)


def assert_unauthorized(reply: Reply) -> str:
    """A JSON 401 that tells the client to send a bearer token; returns its message."""
    status, message = error_of(reply)
    assert status == 401, reply.body
    assert reply.headers.get("WWW-Authenticate", "").lower().startswith("bearer"), reply.headers
    return message


def assert_no_secrets(reply: Reply, password: str) -> None:
    body = reply.body.decode("utf-8", errors="replace")
    assert password not in body
    assert "argon2" not in body.lower()
    assert "hash" not in body.lower()


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def other_signer(services: Services, *, secret: str | None = None, ttl: int = 3600) -> TokenService:
    """A token signer like the service's own, with another secret and/or lifetime."""
    return TokenService(secret=secret or services.settings.secret, ttl=ttl,
                        guard=services.redis, db=services.db)


async def new_user(api: Api, username: str, password: str = PASSWORD) -> dict[str, Any]:
    reply = await api.post("/users", json_body={"username": username, "password": password})
    assert reply.status == 201, reply.json
    user: dict[str, Any] = reply.json
    return user


async def login(api: Api, username: str, password: str = PASSWORD) -> Reply:
    return await api.post("/tokens", json_body={"username": username, "password": password})


async def user_count(services: Services) -> int:
    return await services.db["users"].count_documents({})


# -- POST /users --------------------------------------------------------------------------------
@pytest.mark.gen_test
async def test_register_answers_201_with_id_and_username_only(api):
    reply = await api.post("/users", json_body={"username": "alice", "password": PASSWORD})
    assert reply.status == 201
    assert set(reply.json) == {"id", "username"}
    assert reply.json["username"] == "alice"
    assert isinstance(reply.json["id"], str)
    assert reply.json["id"]
    assert_no_secrets(reply, PASSWORD)


@pytest.mark.gen_test
async def test_register_stores_an_argon2id_hash_not_the_password(api, services):
    await new_user(api, "alice")
    await new_user(api, "bob")  # same password
    docs = {doc["username"]: doc async for doc in services.db["users"].find()}
    hashes = {}
    for name, doc in docs.items():
        assert PASSWORD not in repr(doc)
        found = [v for v in doc.values() if isinstance(v, str) and v.startswith("$argon2id$")]
        assert len(found) == 1, doc
        assert PasswordHasher().verify(found[0], PASSWORD)
        hashes[name] = found[0]
    assert hashes["alice"] != hashes["bob"]  # salted


@pytest.mark.gen_test
async def test_register_a_taken_username_is_409_and_keeps_the_first_password(api):
    await new_user(api, "alice")
    again = await api.post("/users", json_body={"username": "alice", "password": "other password"})
    assert error_of(again)[0] == 409
    assert_no_secrets(again, "other password")
    assert (await login(api, "alice", "other password")).status == 401
    assert (await login(api, "alice")).status == 201


@pytest.mark.gen_test
async def test_concurrent_registrations_of_one_username_create_one_user(api, services):
    replies = await asyncio.gather(*[
        api.post("/users", json_body={"username": "alice", "password": f"password-{i}"})
        for i in range(5)
    ])
    assert sorted(r.status for r in replies) == [201, 409, 409, 409, 409]
    assert await user_count(services) == 1


@pytest.mark.gen_test
@pytest.mark.parametrize("username", ["abc", "a" * 32, "a_b.c-9", "123"])
async def test_register_accepts_usernames_of_3_to_32_allowed_characters(api, username):
    reply = await api.post("/users", json_body={"username": username, "password": PASSWORD})
    assert reply.status == 201, reply.json
    assert reply.json["username"] == username


@pytest.mark.gen_test
@pytest.mark.parametrize("username", [
    "ab", "a" * 33, "", "Alice", "al ice", "al@ice", "ålice", "alice\n", "al/ice", "al$ice",
])
async def test_register_refuses_a_bad_username_with_400(api, services, username):
    reply = await api.post("/users", json_body={"username": username, "password": PASSWORD})
    assert error_of(reply)[0] == 400
    assert await user_count(services) == 0


@pytest.mark.gen_test
async def test_register_needs_a_password_of_at_least_8_characters(api, services):
    short = await api.post("/users", json_body={"username": "alice", "password": "1234567"})
    assert error_of(short)[0] == 400
    assert_no_secrets(short, "1234567")
    assert await user_count(services) == 0
    enough = await api.post("/users", json_body={"username": "alice", "password": "12345678"})
    assert enough.status == 201


BAD_CREDENTIAL_BODIES = [
    pytest.param({}, id="empty-object"),
    pytest.param({"username": "alice"}, id="no-password"),
    pytest.param({"password": PASSWORD}, id="no-username"),
    pytest.param({"username": 123, "password": PASSWORD}, id="number-username"),
    pytest.param({"username": None, "password": PASSWORD}, id="null-username"),
    pytest.param({"username": ["alice"], "password": PASSWORD}, id="list-username"),
    pytest.param({"username": {"$ne": None}, "password": PASSWORD}, id="operator-username"),
    pytest.param({"username": "alice", "password": 12345678}, id="number-password"),
    pytest.param({"username": "alice", "password": {"$gt": ""}}, id="operator-password"),
    pytest.param({"username": "alice", "password": PASSWORD, "admin": True}, id="unknown-field"),
    pytest.param(["alice", PASSWORD], id="not-an-object"),
]


@pytest.mark.gen_test
@pytest.mark.parametrize("body", BAD_CREDENTIAL_BODIES)
async def test_register_refuses_missing_non_string_or_unknown_fields_with_400(api, services, body):
    reply = await api.post("/users", json_body=body)
    assert error_of(reply)[0] == 400
    assert await user_count(services) == 0


@pytest.mark.gen_test
async def test_register_refuses_broken_json_with_400(api, services):
    reply = await api.post("/users", body='{"username": "alice", "password": ',
                           headers={"Content-Type": "application/json"})
    assert error_of(reply)[0] == 400
    assert await user_count(services) == 0


@pytest.mark.gen_test
@pytest.mark.parametrize("content_type", [FORM["Content-Type"], "text/plain", None])
async def test_register_refuses_a_non_json_content_type_with_415(api, services, content_type):
    headers = {"Content-Type": content_type} if content_type else {}
    body = f"username=alice&password={PASSWORD}" if content_type == FORM["Content-Type"] else (
        f'{{"username": "alice", "password": "{PASSWORD}"}}')
    reply = await api.post("/users", body=body, headers=headers)
    assert error_of(reply)[0] == 415
    assert await user_count(services) == 0


@pytest.mark.gen_test
async def test_register_accepts_json_with_a_charset(api):
    reply = await api.post("/users", json_body={"username": "alice", "password": PASSWORD},
                           headers={"Content-Type": "application/json; charset=utf-8"})
    assert reply.status == 201, reply.json


@pytest.mark.gen_test
async def test_account_routes_refuse_other_methods_with_405(api):
    for path in ("/users", "/tokens"):
        assert error_of(await api.get(path))[0] == 405


# -- POST /tokens -------------------------------------------------------------------------------
@pytest.mark.gen_test
async def test_login_answers_201_with_a_token_expiring_about_token_ttl_from_now(api, services):
    await new_user(api, "alice")
    reply = await login(api, "alice")
    assert reply.status == 201
    assert set(reply.json) == {"token", "expires_at"}
    assert isinstance(reply.json["token"], str)
    assert reply.json["token"]
    assert ISO_8601.fullmatch(reply.json["expires_at"]), reply.json["expires_at"]
    expires_at = datetime.fromisoformat(reply.json["expires_at"])
    remaining = (expires_at - datetime.now(UTC)).total_seconds()
    ttl = services.settings.token_ttl
    assert ttl - 60 < remaining <= ttl + 1
    assert_no_secrets(reply, PASSWORD)


@pytest.mark.gen_test
async def test_each_login_issues_a_different_working_token(api):
    await new_user(api, "alice")
    first, second = [(await login(api, "alice")).json["token"] for _ in range(2)]
    assert first != second
    for token in (first, second):
        assert (await api.get("/todo", token=token)).status == 200


@pytest.mark.gen_test
async def test_wrong_password_and_unknown_user_get_the_same_401(api):
    await new_user(api, "alice")
    wrong_password = await login(api, "alice", "not the password")
    unknown_user = await login(api, "nobody", PASSWORD)
    differently_cased = await login(api, "ALICE", PASSWORD)
    messages = {assert_unauthorized(r) for r in (wrong_password, unknown_user, differently_cased)}
    assert len(messages) == 1
    assert wrong_password.json == unknown_user.json == differently_cased.json
    assert "token" not in wrong_password.json
    assert_no_secrets(wrong_password, "not the password")


@pytest.mark.gen_test
@pytest.mark.parametrize("body", BAD_CREDENTIAL_BODIES)
async def test_login_refuses_missing_non_string_or_unknown_fields_with_400(api, body):
    await new_user(api, "alice")
    reply = await api.post("/tokens", json_body=body)
    assert error_of(reply)[0] == 400
    assert "token" not in reply.json


@pytest.mark.gen_test
async def test_login_refuses_a_form_body_with_415(api):
    await new_user(api, "alice")
    reply = await api.post("/tokens", body=f"username=alice&password={PASSWORD}", headers=FORM)
    assert error_of(reply)[0] == 415
    assert "token" not in reply.json


# -- using a token ------------------------------------------------------------------------------
@pytest.mark.gen_test
async def test_the_token_authorizes_todo_requests_as_its_user(api):
    token = await api.register("alice")
    created = await api.post("/todo", token=token, json_body={"content": "buy milk"})
    assert created.status == 201, created.json
    assert (await api.get(f"/todo/{created.json['id']}", token=token)).status == 200
    other = await api.register("bob")
    assert (await api.get("/todo", token=other)).json["data"] == []


@pytest.mark.gen_test
@pytest.mark.parametrize("scheme", ["bearer", "BEARER", "Bearer"])
async def test_the_bearer_scheme_is_case_insensitive(api, scheme):
    token = await api.register("alice")
    reply = await api.get("/todo", headers={"Authorization": f"{scheme} {token}"})
    assert reply.status == 200, reply.json


@pytest.mark.gen_test
async def test_todo_routes_without_a_token_are_401(api):
    assert_unauthorized(await api.get("/todo"))
    assert_unauthorized(await api.post("/todo", json_body={"content": "x"}))
    assert_unauthorized(await api.get(f"/todo/{ObjectId()}"))
    assert_unauthorized(await api.delete("/tokens/current"))


@pytest.mark.gen_test
@pytest.mark.parametrize("header", [
    "Basic {token}", "Token {token}", "{token}", "Bearer", "Bearer ", "Bearer{token}",
    "Bearer {token}.extra", "Bearer {token} {token}",
])
async def test_a_malformed_authorization_header_is_401(api, header):
    token = await api.register("alice")
    reply = await api.get("/todo", headers={"Authorization": header.format(token=token)})
    assert_unauthorized(reply)


@pytest.mark.gen_test
async def test_a_token_with_a_tampered_payload_is_401(api):
    token = await api.register("alice")
    payload, signature = token.split(".")
    flipped = ("B" if payload[0] == "A" else "A") + payload[1:]
    assert_unauthorized(await api.get("/todo", token=f"{flipped}.{signature}"))


@pytest.mark.gen_test
async def test_a_token_cannot_be_rewritten_to_act_as_another_user(api):
    alice_token = await api.register("alice")
    bob = await new_user(api, "bob")
    payload, signature = alice_token.split(".")
    _alice_id, rest = unb64(payload).decode("ascii").split(".", 1)
    forged_payload = b64(f"{bob['id']}.{rest}".encode("ascii"))
    forged = f"{forged_payload}.{signature}"
    assert_unauthorized(await api.get("/todo", token=forged))


@pytest.mark.gen_test
@pytest.mark.parametrize("tamper", ["flip", "truncate", "drop", "non-ascii"])
async def test_a_token_with_a_tampered_signature_is_401(api, tamper):
    token = await api.register("alice")
    payload, signature = token.split(".")
    changed = {
        "flip": ("B" if signature[0] == "A" else "A") + signature[1:],
        "truncate": signature[:-2],
        "drop": "",
        "non-ascii": signature[:-1] + "\u00e9",  # a byte a client can send in a header
    }[tamper]
    assert_unauthorized(await api.get("/todo", token=f"{payload}.{changed}"))


@pytest.mark.gen_test
async def test_a_token_signed_with_another_secret_is_401(api, services):
    user = await new_user(api, "alice")
    user_id = ObjectId(user["id"])
    genuine, _ = other_signer(services).issue(user_id)
    assert (await api.get("/todo", token=genuine)).status == 200  # the signer itself is sound
    foreign, _ = other_signer(services, secret="another-secret-" + "y" * 40).issue(user_id)
    assert_unauthorized(await api.get("/todo", token=foreign))


@pytest.mark.gen_test
async def test_an_expired_token_is_401(api, services):
    user = await new_user(api, "alice")
    expired, expires_at = other_signer(services, ttl=-60).issue(ObjectId(user["id"]))
    assert expires_at < datetime.now(UTC)
    assert_unauthorized(await api.get("/todo", token=expired))


# -- DELETE /tokens/current ---------------------------------------------------------------------
@pytest.mark.gen_test
async def test_logout_is_204_and_the_token_fails_at_once(api):
    token = await api.register("alice")
    assert (await api.get("/todo", token=token)).status == 200
    reply = await api.delete("/tokens/current", token=token)
    assert reply.status == 204
    assert reply.body == b""
    assert_unauthorized(await api.get("/todo", token=token))
    assert_unauthorized(await api.delete("/tokens/current", token=token))


@pytest.mark.gen_test
async def test_logout_leaves_the_users_other_tokens_working(api):
    first = await api.register("alice")
    second = (await login(api, "alice")).json["token"]
    assert (await api.delete("/tokens/current", token=first)).status == 204
    assert_unauthorized(await api.get("/todo", token=first))
    assert (await api.get("/todo", token=second)).status == 200
    assert (await login(api, "alice")).status == 201


@pytest.mark.gen_test
async def test_logout_on_one_instance_is_seen_by_another_at_once(api, services):
    token = await api.register("alice")
    async with instance(services.settings) as other:
        assert set(await checked_without_mongodb(other, token)) == {200}
        assert (await api.delete("/tokens/current", token=token)).status == 204
        assert_unauthorized(await other.api.get("/todo", token=token))


@pytest.mark.gen_test
async def test_checking_a_token_needs_no_mongodb_round_trip_while_redis_is_up(services):
    async with instance(services.settings) as inst:
        token = await inst.api.register("alice")
        created = await inst.api.post("/todo", token=token, json_body={"content": "buy milk"})
        await checked_without_mongodb(inst, token)  # warm-up
        before = inst.mongo_commands.by_collection.copy()
        assert before["users"] > 0  # the listener does see these collections
        for _ in range(10):
            assert (await inst.api.get(f"/todo/{created.json['id']}", token=token)).status == 200
            assert (await inst.api.get("/todo", token=token)).status == 200
        assert inst.mongo_commands.by_collection == before


# -- Redis down ---------------------------------------------------------------------------------
@pytest.mark.gen_test(timeout=60)
async def test_tokens_are_checked_correctly_while_redis_is_down(own_redis, own_redis_settings):
    async with instance(own_redis_settings, drop_database=True) as inst:
        api = inst.api
        valid = await api.register("alice")
        revoked_before, revoked_during = [(await login(api, "alice")).json["token"]
                                          for _ in range(2)]
        await checked_without_mongodb(inst, valid)
        assert (await api.delete("/tokens/current", token=revoked_before)).status == 204

        own_redis.stop()
        assert (await api.get("/todo", token=valid)).status == 200
        assert_unauthorized(await api.get("/todo", token=revoked_before))
        assert (await api.delete("/tokens/current", token=revoked_during)).status == 204
        assert_unauthorized(await api.get("/todo", token=revoked_during))
        assert (await api.get("/todo", token=valid)).status == 200
        fresh = await login(api, "alice")
        assert (await api.get("/todo", token=fresh.json["token"])).status == 200


@pytest.mark.gen_test(timeout=60)
async def test_revocations_survive_a_redis_restart_that_lost_every_key(
    own_redis, own_redis_settings
):
    async with instance(own_redis_settings, drop_database=True) as inst:
        api = inst.api
        valid = await api.register("alice")
        revoked_before, revoked_during = [(await login(api, "alice")).json["token"]
                                          for _ in range(2)]
        await checked_without_mongodb(inst, valid)
        assert (await api.delete("/tokens/current", token=revoked_before)).status == 204
        own_redis.stop()
        assert (await api.delete("/tokens/current", token=revoked_during)).status == 204

        own_redis.start(empty=True)
        for revoked in (revoked_before, revoked_during):
            assert_unauthorized(await api.get("/todo", token=revoked))
        assert (await api.get("/todo", token=valid)).status == 200
        # Once Redis is trusted again (refilled from MongoDB), it still refuses both.
        for revoked in (revoked_before, revoked_during):
            assert set(await checked_without_mongodb(inst, revoked)) == {401}
        assert set(await checked_without_mongodb(inst, valid)) == {200}


@pytest.mark.gen_test(timeout=60)
async def test_a_logout_during_a_redis_outage_holds_on_every_instance_after_redis_returns(
    own_redis, own_redis_settings
):
    """Redis comes back with its data (a network blip, or a restart from its append-only file)
    after the instance that took the logout has shut down: no instance may accept the token."""
    async with instance(own_redis_settings, drop_database=True) as other:
        async with instance(own_redis_settings) as first:
            token = await first.api.register("alice")
            assert set(await checked_without_mongodb(first, token)) == {200}
            assert set(await checked_without_mongodb(other, token)) == {200}
            own_redis.stop()
            assert (await first.api.delete("/tokens/current", token=token)).status == 204
            assert_unauthorized(await first.api.get("/todo", token=token))
        own_redis.start()
        assert set(await checked_without_mongodb(other, token)) == {401}
        async with instance(own_redis_settings) as newcomer:
            assert set(await checked_without_mongodb(newcomer, token)) == {401}
