"""Real servers for the tests: a mongod and a redis-server on free loopback ports.

Each test gets its own database and Redis key prefix, and the real application factory served
over a real socket by pytest-tornado. TODO_MONGO_URI / TODO_REDIS_URL point the tests at
servers of your own instead (nothing outside the test's database and prefix is touched).

The API's contract tests (modules marked `contract`) run twice: against one instance, and
through nginx in front of a whole supervised stack (`todo-stack up` on free ports, started
once per session), where `settings` and `services` name the stack's own database and Redis.
A test that cannot run through nginx says why with `@pytest.mark.instance_only(reason)`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
import uvloop
from pymongo import MongoClient, monitoring
from tornado.httpclient import AsyncHTTPClient, HTTPResponse
from tornado.httpserver import HTTPServer
from tornado.ioloop import IOLoop
from tornado.testing import bind_unused_port
from tornado.web import Application

from scripts.local_services import (
    LocalServer,
    free_port,
    mongod_server,
    port_in_use,
    redis_server,
)
from scripts.netlab.topology import Lab
from scripts.stack import commands
from scripts.stack.config import StackConfig
from server.domain.indexes import ensure_indexes
from server.infra.settings import Settings, load_or_create_secret
from server.web.app import make_app
from server.web.services import Services, mongo_client, open_services

TEST_SECRET = "test-secret-" + "x" * 40


@pytest.fixture
def io_loop() -> Iterator[IOLoop]:
    """Replaces pytest-tornado's fixture, whose deprecated clear_current() leaves a new
    unclosed asyncio loop behind: one loop per test, closed and unset afterwards. It is uvloop,
    as in the instances: a closed transport fails differently there (RuntimeError, not OSError:
    server/infra/redis_connections.py)."""
    asyncio_loop = uvloop.new_event_loop()
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


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[LocalServer]:
    """A Redis of one test's own, to stop, pause or count commands on without touching others."""
    server = redis_server(tmp_path / "redis", free_port())
    server.start()
    yield server
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
def settings(route: str, request: pytest.FixtureRequest) -> Settings:
    if route in STACK_ROUTES:
        return stack_settings(stack_of(route, request))
    return make_settings(request.getfixturevalue("mongo_uri"), request.getfixturevalue("redis_url"))


# -- the routes of the contract tests -------------------------------------------------------
# One instance in the test's loop; the session stack's nginx, whose edge answers cached first
# pages itself; and a second stack with the edge off, where nginx only proxies. Run inside a
# lab's client host with TODO_TEST_LAB_VAR naming the lab's directory (tests/lab does), the
# only route is the lab's edge host, in front of app hosts and a replica set on hosts of
# their own.
INSTANCE, NGINX, NGINX_EDGE_OFF, LAB = "instance", "nginx", "nginx-edge-off", "lab"
STACK_ROUTES = {NGINX: "nginx_stack", NGINX_EDGE_OFF: "nginx_stack_edge_off", LAB: "lab_stack"}
LAB_VAR = os.environ.get("TODO_TEST_LAB_VAR", "")


def stack_of(route: str, request: pytest.FixtureRequest) -> StackConfig:
    stack: StackConfig = request.getfixturevalue(STACK_ROUTES[route])
    return stack


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Contract tests that talk to the API run through every route."""
    definition = metafunc.definition
    if ("api" in metafunc.fixturenames and definition.get_closest_marker("contract")
            and not definition.get_closest_marker("instance_only")):
        routes = [LAB] if LAB_VAR else [INSTANCE, NGINX, NGINX_EDGE_OFF]
        metafunc.parametrize("route", routes, indirect=True)


@pytest.fixture
def route(request: pytest.FixtureRequest) -> str:
    """How `api` reaches the service: one instance in the test's loop, or the stack's nginx."""
    return str(getattr(request, "param", INSTANCE))


def consecutive_free_ports(count: int) -> int:
    for _ in range(100):
        base = free_port()
        if all(not port_in_use(base + i) for i in range(count)) and base + count < 65536:
            return base
    raise RuntimeError("no run of free ports")


def stack_config(var: Path, db_name: str, **overrides: Any) -> StackConfig:
    """A stack of two instances with its own servers, every port a free one."""
    values: dict[str, Any] = {
        "var": str(var), "instances": 2, "base_port": consecutive_free_ports(2),
        "http_port": free_port(), "https_port": free_port(), "mongo_port": free_port(),
        "redis_port": free_port(), "broker_port": free_port(), "db_name": db_name,
    }
    values.update(overrides)
    return StackConfig(**values)


def running_stack(var: Path, db_name: str, **overrides: Any) -> Iterator[StackConfig]:
    """A whole stack (nginx, two supervised instances, MongoDB, Redis), up while in use."""
    # The web app is published outside pytest's temporary folders: those are 0700 (and pytest
    # makes them so again whenever a session starts), which nginx's unprivileged workers
    # cannot enter.
    webapp = Path(tempfile.mkdtemp(prefix="todo-webapp-"))
    webapp.chmod(0o755)
    config = stack_config(var, db_name, webapp_dir=str(webapp / "webapp"), **overrides)
    # On a thread of its own: `up` runs asyncio.run, which would unset the event loop of the
    # test that first asks for the stack.
    try:
        with ThreadPoolExecutor(max_workers=1) as thread:
            try:
                thread.submit(commands.up, config).result()
                yield config
            finally:  # an `up` that failed half-way leaves supervisord running
                thread.submit(commands.down, config).result()
    finally:
        shutil.rmtree(webapp, ignore_errors=True)


def session_stack(
    tmp_path_factory: pytest.TempPathFactory, name: str, *, edge: bool
) -> Iterator[StackConfig]:
    """One whole stack for the session's contract tests."""
    yield from running_stack(tmp_path_factory.mktemp(name) / "var", "todo_contract", edge=edge)


@pytest.fixture(scope="session")
def nginx_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StackConfig]:
    """The session's stack with the edge on (nginx answers cached first pages itself)."""
    yield from session_stack(tmp_path_factory, "nginx-stack", edge=True)


@pytest.fixture(scope="session")
def lab_stack() -> StackConfig:
    """The lab's app host as a stack: its settings are the instances' own, and its base_url
    the lab's edge host (nginx), as a client sees it."""
    lab = Lab.load(Path(LAB_VAR))
    if lab is None:
        pytest.exit(f"TODO_TEST_LAB_VAR={LAB_VAR}: no lab is set up there")
    app = lab.stack_config("app1")
    address, _, port = lab.edge_url.removeprefix("http://").partition(":")
    app.listen, app.http_port = address, int(port or 80)
    return app


@pytest.fixture(scope="session")
def nginx_stack_edge_off(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StackConfig]:
    """A second stack whose nginx only proxies: the contract holds both ways."""
    yield from session_stack(tmp_path_factory, "nginx-stack-edge-off", edge=False)


def stack_settings(cfg: StackConfig) -> Settings:
    """The settings the stack's instances run with: tests see what they see."""
    return Settings(
        mongo_uri=cfg.mongo_uri, redis_url=cfg.redis_url, broker_url=cfg.broker_url,
        result_backend=cfg.result_backend, db_name=cfg.db_name,
        secret=load_or_create_secret(cfg.path("secret")),
        max_body_size=cfg.max_body_size, max_upload_size=cfg.max_upload_size,
    )


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


class ProfiledFinds:
    """The `find` commands MongoDB ran on the todos collection, whoever sent them: read from
    the database profiler, for instances in processes of their own (the stack's)."""

    def __init__(self, settings: Settings) -> None:
        self.client: MongoClient[dict[str, Any]] = MongoClient(settings.mongo_uri)
        self.db = self.client[settings.db_name]
        self.namespace = f"{settings.db_name}.todos"
        self.db.command("profile", 0)
        self.db.drop_collection("system.profile")
        # Large enough that a test's operations never wrap the capped collection.
        self.db.create_collection("system.profile", capped=True, size=16 * 1024 * 1024)
        self.db.command("profile", 2)

    @property
    def finds(self) -> int:
        return self.db["system.profile"].count_documents({"ns": self.namespace, "op": "query"})

    def close(self) -> None:
        self.db.command("profile", 0)
        self.client.close()


@pytest.fixture
def query_counter(
    route: str, request: pytest.FixtureRequest
) -> Iterator[QueryCounter | ProfiledFinds]:
    """Counts the list queries MongoDB receives, through either route."""
    if route in STACK_ROUTES:
        profiled = ProfiledFinds(request.getfixturevalue("settings"))
        yield profiled
        profiled.close()
    else:
        yield QueryCounter()


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


async def remove_test_data(services: Services, *, drop: bool = True) -> None:
    """What a test stored, in MongoDB and under its Redis prefix. A database that a running
    stack shares is emptied, not dropped: its instances made its indexes once, at start-up."""
    if drop:
        await services.mongo.drop_database(services.settings.db_name)
    else:
        for name in await services.db.list_collection_names():
            if not name.startswith("system."):
                await services.db[name].delete_many({})
    pattern = f"{services.settings.redis_prefix}*"
    keys = [k async for k in services.redis.client.scan_iter(pattern)]
    if keys:
        await services.redis.client.delete(*keys)


def stop_services(io_loop: Any, services: Services, *, drop: bool = True) -> None:
    async def clean() -> None:
        try:
            await remove_test_data(services, drop=drop)
        finally:
            await services.close()

    try:
        io_loop.run_sync(clean, timeout=30)
    except Exception:
        io_loop.run_sync(services.close, timeout=30)


@pytest.fixture
def services(
    io_loop: Any, settings: Settings, route: str, request: pytest.FixtureRequest
) -> Iterator[Services]:
    shared = route in STACK_ROUTES
    # Direct, the instance is the test's own: its MongoDB client tells the query counter.
    counter = None if shared else request.getfixturevalue("query_counter")
    services = start_services(io_loop, settings, counter)
    if shared:  # whatever an earlier test through the stack left
        io_loop.run_sync(lambda: remove_test_data(services, drop=False), timeout=30)
    yield services
    stop_services(io_loop, services, drop=not shared)


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
def api(route: str, request: pytest.FixtureRequest) -> Iterator[Api]:
    if route in STACK_ROUTES:
        request.getfixturevalue("services")  # empties the stack's data before and after
        client = Api(stack_of(route, request).base_url)
    else:
        request.getfixturevalue("http_server")
        client = Api(request.getfixturevalue("base_url"))
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
