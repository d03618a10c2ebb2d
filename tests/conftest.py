"""Real servers for the tests: a mongod and a redis-server on free loopback ports.

Each test gets its own database and Redis key prefix, and the real application factory served
over a real socket by pytest-tornado. TODO_MONGO_URI / TODO_REDIS_URL point the tests at
servers of your own instead (nothing outside the test's database and prefix is touched).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
from pymongo import monitoring
from tornado.httpclient import AsyncHTTPClient, HTTPResponse
from tornado.httpserver import HTTPServer
from tornado.ioloop import IOLoop
from tornado.testing import bind_unused_port
from tornado.web import Application

from scripts.local_services import LocalServer, free_port, mongod_server, redis_server
from server.domain.indexes import ensure_indexes
from server.infra.settings import Settings
from server.web.app import make_app
from server.web.services import Services, mongo_client, open_services

TEST_SECRET = "test-secret-" + "x" * 40


@pytest.fixture
def io_loop() -> Iterator[IOLoop]:
    """Replaces pytest-tornado's fixture, whose deprecated clear_current() leaves a new
    unclosed asyncio loop behind: one asyncio loop per test, closed and unset afterwards."""
    asyncio_loop = asyncio.new_event_loop()
    asyncio.set_event_loop(asyncio_loop)
    loop = IOLoop.current()
    yield loop
    loop.close(all_fds=True)
    asyncio.set_event_loop(None)


@pytest.fixture(scope="session")
def mongo_uri(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if os.environ.get("TODO_MONGO_URI"):
        yield os.environ["TODO_MONGO_URI"]
        return
    server = mongod_server(tmp_path_factory.mktemp("mongo"), free_port())
    server.start()
    yield f"mongodb://127.0.0.1:{server.port}"
    server.stop()


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if os.environ.get("TODO_REDIS_URL"):
        yield os.environ["TODO_REDIS_URL"]
        return
    server = redis_server(tmp_path_factory.mktemp("redis"), free_port())
    server.start()
    yield f"redis://127.0.0.1:{server.port}/0"
    server.stop()


def redis_db(url: str, db: int) -> str:
    """`url` with another database number: the broker and the results beside the cache."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{db}"))


def make_settings(mongo_uri: str, redis_url: str, **overrides: Any) -> Settings:
    name = uuid.uuid4().hex[:12]
    values: dict[str, Any] = {
        "mongo_uri": mongo_uri,
        "redis_url": redis_url,
        # Never the defaults: those name the Redis on 6379, which may be a real stack's.
        "broker_url": redis_db(redis_url, 1),
        "result_backend": redis_db(redis_url, 2),
        "db_name": f"todo_test_{name}",
        "redis_prefix": f"todo-test:{name}:",
        "secret": TEST_SECRET,
    }
    values.update(overrides)
    return Settings(**values)


@pytest.fixture
def settings(mongo_uri: str, redis_url: str) -> Settings:
    return make_settings(mongo_uri, redis_url)


class QueryCounter(monitoring.CommandListener):
    """Counts the `find` commands MongoDB receives on the todos collection."""

    def __init__(self) -> None:
        self.finds = 0

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if event.command_name == "find" and event.command.get("find") == "todos":
            self.finds += 1

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


@pytest.fixture
def query_counter() -> QueryCounter:
    return QueryCounter()


async def build_services(settings: Settings, listener: Any = None) -> Services:
    """Real services for `settings`; `listener` (a pymongo CommandListener) sees every command."""
    options = {"event_listeners": [listener]} if listener else {}
    services = open_services(settings, mongo=mongo_client(settings, **options))
    await ensure_indexes(services.db)
    return services


def start_services(io_loop: Any, settings: Settings, listener: Any = None) -> Services:
    result: Services = io_loop.run_sync(lambda: build_services(settings, listener), timeout=30)
    return result


@contextlib.asynccontextmanager
async def another_instance(
    settings: Settings, listener: Any = None, *, indexes: bool = True, **server_options: Any
) -> AsyncIterator[Api]:
    """A second instance (own clients, own HTTP server and port) on the same data; without
    `indexes` nothing touches MongoDB before the first request (it may be down on purpose)."""
    services = await build_services(settings, listener) if indexes else open_services(settings)
    sock, port = bind_unused_port()
    server = HTTPServer(make_app(services), **server_options)
    server.add_sockets([sock])
    client = Api(f"http://127.0.0.1:{port}")
    try:
        yield client
    finally:
        client.close()
        server.stop()
        await services.close()


def stop_services(io_loop: Any, services: Services) -> None:
    async def clean() -> None:
        try:
            await services.mongo.drop_database(services.settings.db_name)
            pattern = f"{services.settings.redis_prefix}*"
            keys = [k async for k in services.redis.client.scan_iter(pattern)]
            if keys:
                await services.redis.client.delete(*keys)
        finally:
            await services.close()

    try:
        io_loop.run_sync(clean, timeout=30)
    except Exception:
        io_loop.run_sync(services.close, timeout=30)


@pytest.fixture
def services(io_loop: Any, settings: Settings, query_counter: QueryCounter) -> Iterator[Services]:
    services = start_services(io_loop, settings, query_counter)
    yield services
    stop_services(io_loop, services)


@pytest.fixture
def app(services: Services) -> Application:
    return make_app(services)


@pytest.fixture
def base_url(http_port: int) -> str:
    return f"http://127.0.0.1:{http_port}"


@dataclass
class Reply:
    status: int
    headers: Any
    body: bytes
    json: Any = field(default=None)


class Api:
    """A thin HTTP client for the tests: every call goes over the socket to the real server."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.client = AsyncHTTPClient(force_instance=True, max_clients=200)

    async def request(
        self,
        method: str,
        path: str,
        *,
        token: str | None = None,
        json_body: Any = None,
        body: bytes | str | None = None,
        headers: dict[str, str] | None = None,
        request_timeout: float = 20,
    ) -> Reply:
        all_headers = dict(headers or {})
        if token:
            all_headers["Authorization"] = f"Bearer {token}"
        if json_body is not None:
            body = json.dumps(json_body)
            all_headers.setdefault("Content-Type", "application/json")
        if body is None and method in ("POST", "PUT", "PATCH"):
            body = b""
        response: HTTPResponse = await self.client.fetch(
            self.base_url + path, method=method, headers=all_headers, body=body,
            raise_error=False, request_timeout=request_timeout, allow_nonstandard_methods=True,
            decompress_response=True,
        )
        if response.code == 599:
            raise ConnectionError(f"{method} {path}: {response.error}")
        is_json = "json" in response.headers.get("Content-Type", "")
        parsed = json.loads(response.body) if response.body and is_json else None
        return Reply(response.code, response.headers, response.body or b"", parsed)

    async def get(self, path: str, **kwargs: Any) -> Reply:
        return await self.request("GET", path, **kwargs)

    async def post(self, path: str, **kwargs: Any) -> Reply:
        return await self.request("POST", path, **kwargs)

    async def patch(self, path: str, **kwargs: Any) -> Reply:
        return await self.request("PATCH", path, **kwargs)

    async def put(self, path: str, **kwargs: Any) -> Reply:
        return await self.request("PUT", path, **kwargs)

    async def delete(self, path: str, **kwargs: Any) -> Reply:
        return await self.request("DELETE", path, **kwargs)

    async def register(self, username: str, password: str = "correct horse") -> str:  # noqa: S107
        """Create a user and return a fresh bearer token for it."""
        created = await self.post("/users", json_body={"username": username, "password": password})
        assert created.status == 201, created.json
        issued = await self.post("/tokens", json_body={"username": username, "password": password})
        assert issued.status == 201, issued.json
        return str(issued.json["token"])

    def close(self) -> None:
        self.client.close()


@pytest.fixture
def api(http_server: Any, base_url: str) -> Iterator[Api]:
    client = Api(base_url)
    yield client
    client.close()


def error_of(reply: Reply) -> tuple[int, str]:
    """The (status, message) of a JSON error reply, checking its shape on the way."""
    assert set(reply.json) >= {"error"}, reply.body
    assert reply.json["error"]["status"] == reply.status
    assert isinstance(reply.json["error"]["message"], str)
    return reply.status, reply.json["error"]["message"]


@pytest.fixture
def server_dir(tmp_path: Path) -> Path:
    return tmp_path


__all__ = [
    "Api", "LocalServer", "QueryCounter", "Reply", "error_of", "make_settings", "redis_db",
]
