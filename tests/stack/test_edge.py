"""The edge (conf/edge/): nginx answers the cached first page itself, exactly as the instances
would, and never less correctly. Through a stack of this module's own (its tests stop Redis
and instances), edge on; the same requests with the edge switched off are the reference.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import http.client
import os
import re
import signal
import socket
import ssl
import time
import urllib.request
from collections.abc import Iterator

import pytest
from redis.asyncio import Redis
from redis.exceptions import RedisError

from scripts.stack import commands
from scripts.stack.config import StackConfig
from scripts.stack.supervisor import Supervisor
from server.infra.settings import load_or_create_secret
from tests.conftest import Api, running_stack, stack_config

# What differs between any two replies, whoever answers.
VOLATILE = {"date", "x-request-id"}


@pytest.fixture(scope="module")
def cfg(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StackConfig]:
    yield from running_stack(tmp_path_factory.mktemp("edge") / "var", "todo_edge_test")


@pytest.fixture
def api(cfg: StackConfig) -> Iterator[Api]:
    client = Api(cfg.base_url)
    yield client
    client.close()


@pytest.fixture
def redis(cfg: StackConfig, io_loop) -> Iterator[Redis]:
    """The stack's Redis, for the tests' loop (it connects on first use)."""
    client = Redis.from_url(cfg.redis_url)
    yield client
    io_loop.run_sync(client.aclose)


def metrics_text(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        return str(reply.read().decode())


def instance_reads(cfg: StackConfig) -> int:
    """GET /todo requests the instances answered, from their own metrics."""
    total = 0
    for port in cfg.ports:
        text = metrics_text(port)
        for match in re.finditer(r'todo_http_requests_total\{([^}]*)\} ([0-9.e+]+)', text):
            if 'route="/todo"' in match.group(1) and 'method="GET"' in match.group(1):
                total += int(float(match.group(2)))
    return total


async def edge_counter(redis: Redis, name: str) -> int:
    return int(await redis.hget("todo:edge-metrics", name) or 0)


async def until_counter_reaches(redis: Redis, name: str, wanted: int) -> None:
    """nginx pushes its counters every second."""
    for _ in range(100):
        with contextlib.suppress(RedisError):  # a connection from before a Redis restart
            if await edge_counter(redis, name) >= wanted:
                return
        await asyncio.sleep(0.1)
    raise AssertionError(f"edge counter {name} stayed below {wanted}")


async def until_edge_serves(cfg: StackConfig, api: Api, token: str) -> None:
    """Read until a read no longer reaches an instance (page cached, every lease present)."""
    for _ in range(200):
        before = await asyncio.to_thread(instance_reads, cfg)
        assert (await api.get("/todo", token=token)).status == 200
        if await asyncio.to_thread(instance_reads, cfg) == before:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the edge never served the page")


async def user_with_todos(api: Api, name: str, count: int = 3) -> str:
    token = await api.register(name)
    for number in range(count):
        created = await api.post("/todo", token=token, json_body={"content": f"{name} {number}"})
        assert created.status == 201
    return token


def stack_connection(cfg: StackConfig, scheme: str) -> http.client.HTTPConnection:
    """A connection to the stack's nginx, over HTTP or HTTPS (its self-signed certificate)."""
    if scheme == "https":
        context = ssl.create_default_context()
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
        return http.client.HTTPSConnection("127.0.0.1", cfg.https_port, timeout=10,
                                           context=context)
    return http.client.HTTPConnection("127.0.0.1", cfg.http_port, timeout=10)


def raw_get(cfg: StackConfig, headers: dict[str, str], *, scheme: str = "http"):
    """(status, headers without the volatile ones, body) of GET /todo, nothing decoded."""
    connection = stack_connection(cfg, scheme)
    try:
        connection.request("GET", "/todo", headers=headers)
        reply = connection.getresponse()
        body = reply.read()
        kept = sorted((name.lower(), value) for name, value in reply.getheaders()
                      if name.lower() not in VOLATILE)
        return reply.status, kept, body
    finally:
        connection.close()


def http10_get(cfg: StackConfig, token: str) -> bytes:
    """GET /todo in HTTP/1.0 without a Host header; the reply's body."""
    with socket.create_connection(("127.0.0.1", cfg.http_port), timeout=10) as sock:
        sock.sendall(f"GET /todo HTTP/1.0\r\nAuthorization: Bearer {token}\r\n\r\n".encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return data.partition(b"\r\n\r\n")[2]


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def forged(cfg: StackConfig, token: str, *, expires_at: int) -> str:
    """`token` with another expiry, signed with the stack's own secret (a valid signature)."""
    payload = base64.urlsafe_b64decode(token.split(".")[0] + "==").decode()
    user_id, token_id, _ = payload.split(".")
    new_payload = b64(f"{user_id}.{token_id}.{expires_at}".encode())
    secret = load_or_create_secret(cfg.path("secret"))
    key = hashlib.sha256(("todo-token:" + secret).encode()).digest()
    signature = b64(hmac.new(key, new_payload.encode(), hashlib.sha256).digest())
    return f"{new_payload}.{signature}"


@pytest.mark.gen_test(timeout=60)
async def test_the_edge_answers_the_first_page_without_an_instance(cfg, api, redis):
    token = await user_with_todos(api, "edge_hits")
    await until_edge_serves(cfg, api, token)
    hits = await edge_counter(redis, "hits")
    before = await asyncio.to_thread(instance_reads, cfg)
    replies = [await api.get("/todo", token=token) for _ in range(20)]
    assert {reply.status for reply in replies} == {200}
    assert [t["content"] for t in replies[-1].json["data"]] == [f"edge_hits {n}" for n in (2, 1, 0)]
    assert await asyncio.to_thread(instance_reads, cfg) == before
    await until_counter_reaches(redis, "hits", hits + 20)
    assert "todo_edge_hits_total" in await asyncio.to_thread(metrics_text, cfg.base_port)


def owner_of(token: str) -> str:
    return base64.urlsafe_b64decode(token.split(".")[0] + "==").decode().split(".")[0]


@pytest.mark.gen_test(timeout=60)
async def test_a_stale_page_goes_to_one_instance_while_the_edge_serves_it(cfg, api, redis):
    # Past its freshness, a page is reloaded by one request; the rest of a burst get it from
    # the edge meanwhile, instead of all falling on the instances.
    token = await user_with_todos(api, "edge_stale")
    await until_edge_serves(cfg, api, token)
    page_key = f"todo:page:{owner_of(token)}"
    stored = await redis.get(page_key)
    await redis.set(page_key, b"1|" + stored.partition(b"|")[2], px=60_000)
    await asyncio.sleep(1.1)  # no other load of this page is under way (one a second)
    before = await asyncio.to_thread(instance_reads, cfg)
    replies = [await api.get("/todo", token=token) for _ in range(20)]
    assert {reply.status for reply in replies} == {200}
    assert {len(reply.json["data"]) for reply in replies} == {3}
    reached = await asyncio.to_thread(instance_reads, cfg) - before
    assert 1 <= reached <= 2  # one per second at most
    fresh_until = int((await redis.get(page_key)).partition(b"|")[0])
    assert fresh_until > time.time() * 1000  # the instance reloaded it


@pytest.mark.gen_test(timeout=60)
async def test_a_burst_on_a_missing_page_sends_one_read_to_the_instances(cfg, api, redis):
    token = await user_with_todos(api, "edge_burst")
    await until_edge_serves(cfg, api, token)
    await redis.delete(f"todo:page:{owner_of(token)}")
    await asyncio.sleep(1.1)  # no reload of this page is under way (one a second)
    before = await asyncio.to_thread(instance_reads, cfg)
    replies = await asyncio.gather(*(api.get("/todo", token=token) for _ in range(30)))
    assert {reply.status for reply in replies} == {200}
    assert {len(reply.json["data"]) for reply in replies} == {3}
    # One loads the page; the rest wait at the edge for it (a slow load lets one more by).
    assert await asyncio.to_thread(instance_reads, cfg) - before <= 3


@pytest.mark.gen_test(timeout=120)
async def test_the_edge_answers_byte_for_byte_as_the_instances(cfg, api):
    # More than a page, so that the reply has a next link.
    token = await user_with_todos(api, "edge_bytes", count=12)
    revoked = await api.register("edge_revoked")
    await until_edge_serves(cfg, api, token)
    etag = (await api.get("/todo", token=token)).headers["Etag"]
    payload, signature = token.split(".")
    cases = {
        "200": {"Authorization": f"Bearer {token}"},
        "200 lower-case scheme": {"Authorization": f"bearer {token}"},
        "200 gzip": {"Authorization": f"Bearer {token}", "Accept-Encoding": "gzip"},
        "304": {"Authorization": f"Bearer {token}", "If-None-Match": etag},
        "304 weak in a list": {"Authorization": f"Bearer {token}",
                               "If-None-Match": f'"other", W/{etag}'},
        "304 star": {"Authorization": f"Bearer {token}", "If-None-Match": "*"},
        "200 other etag": {"Authorization": f"Bearer {token}", "If-None-Match": '"other"'},
        "401 no token": {},
        "401 basic": {"Authorization": "Basic dXNlcjpwYXNz"},
        "401 bad signature": {"Authorization": f"Bearer {payload}.{signature[:-2]}xx"},
        "401 tampered payload": {"Authorization": f"Bearer {payload[:-2]}AA.{signature}"},
        "401 not a token": {"Authorization": "Bearer nonsense"},
        "401 expired": {"Authorization": f"Bearer {forged(cfg, token, expires_at=1000)}"},
        "401 revoked": {"Authorization": f"Bearer {revoked}"},
        # A browser's session cookie (handlers/cookies.py) when there is no Authorization.
        "200 cookie": {"Cookie": f"session={token}"},
        "200 cookie among others": {"Cookie": f"_xsrf=2|ab|cd|1;session= {token} ; lang=en"},
        "304 cookie": {"Cookie": f"session={token}", "If-None-Match": etag},
        "401 no session cookie": {"Cookie": "_xsrf=2|ab|cd|1; lang=en"},
        "401 cookie bad signature": {"Cookie": f"session={payload}.{signature[:-2]}xx"},
        "401 cookie expired": {"Cookie": f"session={forged(cfg, token, expires_at=1000)}"},
        "401 cookie revoked": {"Cookie": f"session={revoked}"},
        "401 the header wins": {"Authorization": "Basic dXNlcjpwYXNz",
                                "Cookie": f"session={token}"},
        # Left to the instances: what their cookie parser decides.
        "200 cookie twice": {"Cookie": f"session=nonsense; session={token}"},
        "200 cookie quoted": {"Cookie": f'session="{token}"'},
        "401 cookie not a token": {"Cookie": "session=nonsense"},
    }
    assert (await api.delete("/tokens/current", token=revoked)).status == 204
    reads = await asyncio.to_thread(instance_reads, cfg)
    # The edge answers these itself; it leaves the others to the instances.
    passed = ("200 other etag", "401 not a token", "200 cookie twice", "200 cookie quoted",
              "401 cookie not a token")
    own = [name for name in cases if name not in passed]
    edge = {name: raw_get(cfg, cases[name]) for name in own}
    edge_https = raw_get(cfg, cases["200"], scheme="https")
    edge_http10 = http10_get(cfg, token)
    assert await asyncio.to_thread(instance_reads, cfg) == reads
    edge.update({name: raw_get(cfg, cases[name]) for name in cases if name not in own})
    await asyncio.to_thread(commands.switch_edge, cfg, False)
    try:
        python = {name: raw_get(cfg, headers) for name, headers in cases.items()}
        python_https = raw_get(cfg, cases["200"], scheme="https")
        python_http10 = http10_get(cfg, token)
        assert await asyncio.to_thread(instance_reads, cfg) > reads
    finally:
        await asyncio.to_thread(commands.switch_edge, cfg, True)
    for name in cases:
        assert edge[name] == python[name], name
        assert str(edge[name][0]) == name.split()[0], name
    assert edge_https == python_https
    assert f'"next": "https://127.0.0.1:{cfg.https_port}/todo?cursor='.encode() in edge_https[2]
    assert edge_http10 == python_http10
    assert f'"next": "http://127.0.0.1:{cfg.http_port}/todo?cursor='.encode() in edge_http10


@pytest.mark.gen_test(timeout=120)
async def test_reads_see_every_write_at_once_whoever_made_it(cfg, api):
    token = await user_with_todos(api, "edge_writes", count=1)
    await until_edge_serves(cfg, api, token)
    for port in cfg.ports:  # a write on each instance, read through the edge at once
        direct = Api(f"http://127.0.0.1:{port}")
        try:
            created = await direct.post("/todo", token=token, json_body={"content": f"on {port}"})
            assert created.status == 201
        finally:
            direct.close()
        assert (await api.get("/todo", token=token)).json["data"][0]["content"] == f"on {port}"
        await until_edge_serves(cfg, api, token)
    # A job (the worker writes): a purge of finished todos.
    first = (await api.get("/todo", token=token)).json["data"][0]
    assert (await api.put(f"/todo/{first['id']}/finish", token=token)).status == 200
    await until_edge_serves(cfg, api, token)
    queued = await api.post("/jobs", token=token, json_body={"type": "purge", "older_than_days": 0})
    assert queued.status == 202, queued.json
    for _ in range(600):
        job = (await api.get(queued.headers["Location"], token=token)).json
        if job["status"] in ("done", "failed"):
            break
        await asyncio.sleep(0.1)
    assert job["status"] == "done", job
    listed = await api.get("/todo", token=token)
    assert first["id"] not in [todo["id"] for todo in listed.json["data"]]
    # A logout, seen by the very next read.
    await until_edge_serves(cfg, api, token)
    assert (await api.delete("/tokens/current", token=token)).status == 204
    assert (await api.get("/todo", token=token)).status == 401


@pytest.mark.gen_test(timeout=120)
async def test_a_paused_redis_never_shows_a_page_older_than_a_write(cfg, api, redis):
    token = await user_with_todos(api, "edge_paused", count=1)
    await until_edge_serves(cfg, api, token)
    try:
        await redis.execute_command("CLIENT", "PAUSE", "2500", "WRITE")
        created = await api.post("/todo", token=token, json_body={"content": "new"})
        assert created.status == 201
        # Through the pause and past its end, when the old page is readable again.
        for _ in range(70):
            reply = await api.get("/todo", token=token)
            assert reply.status == 200
            assert reply.json["data"][0]["content"] == "new"
            await asyncio.sleep(0.05)
    finally:
        await redis.execute_command("CLIENT", "UNPAUSE")


@pytest.mark.gen_test(timeout=120)
async def test_without_redis_reads_come_from_mongodb_and_no_5xx(cfg, api, redis):
    token = await user_with_todos(api, "edge_no_redis", count=2)
    await until_edge_serves(cfg, api, token)
    errors = await edge_counter(redis, "redis_errors")
    supervisor = Supervisor(cfg)
    await asyncio.to_thread(supervisor.ctl, "stop", "redis")
    try:
        for _ in range(30):
            reply = await api.get("/todo", token=token)
            assert reply.status == 200
            assert [t["content"] for t in reply.json["data"]] == ["edge_no_redis 1",
                                                                  "edge_no_redis 0"]
    finally:
        await asyncio.to_thread(supervisor.ctl, "start", "redis")
    # Counted while Redis was away, pushed once it is back.
    await until_counter_reaches(redis, "redis_errors", errors + 1)
    await until_edge_serves(cfg, api, token)


@pytest.mark.gen_test(timeout=180)
async def test_a_stopped_instance_makes_the_edge_pass_until_it_is_back(cfg, api, redis):
    token = await user_with_todos(api, "edge_stopped", count=1)
    await until_edge_serves(cfg, api, token)
    passes = await edge_counter(redis, "pass:lease")
    supervisor = Supervisor(cfg)
    port = cfg.ports[0]
    await asyncio.to_thread(supervisor.ctl, "stop", f"todo:todo_{port}")
    try:
        # Its lease is gone with it: every read goes to the instance left.
        for _ in range(5):
            reply = await api.get("/todo", token=token)
            assert reply.status == 200
            assert reply.json["data"][0]["content"] == "edge_stopped 0"
        await until_counter_reaches(redis, "pass:lease", passes + 5)
    finally:
        await asyncio.to_thread(supervisor.ctl, "start", f"todo:todo_{port}")
    await asyncio.to_thread(commands.wait_for_http, f"http://127.0.0.1:{port}/readyz", 60)
    await until_edge_serves(cfg, api, token)
    # A crash: no clean close, the lease just expires.
    pid = int(supervisor.ctl("pid", f"todo:todo_{port}").strip())
    passes = await edge_counter(redis, "pass:lease")
    os.kill(pid, signal.SIGKILL)
    for _ in range(100):
        reply = await api.get("/todo", token=token)
        assert reply.status == 200
        if await edge_counter(redis, "pass:lease") > passes:
            break
        await asyncio.sleep(0.05)
    else:
        raise AssertionError("the edge kept serving without the crashed instance's lease")
    ready = f"http://127.0.0.1:{port}/readyz"
    await asyncio.to_thread(commands.wait_for_http, ready, 60)  # supervisor restarts it
    await until_edge_serves(cfg, api, token)


def test_without_nginx_lua_only_an_edge_off_stack_starts(tmp_path, monkeypatch):
    from scripts.stack import config

    monkeypatch.setattr(config, "EDGE_MODULES", ("/nonexistent/ngx_http_lua_module.so",))
    with pytest.raises(config.StackError, match="--edge off"):
        config.nginx_conf(stack_config(tmp_path / "var", "todo_no_lua"))
    off = stack_config(tmp_path / "var", "todo_no_lua", edge=False)
    assert "_by_lua" not in config.nginx_conf(off)


def session_request(cfg: StackConfig, method: str, path: str, *, scheme: str = "http",
                    body: str | None = None, headers: dict[str, str] | None = None):
    """(status, Set-Cookie headers, body) of one request through nginx, over HTTP or HTTPS."""
    connection = stack_connection(cfg, scheme)
    try:
        connection.request(method, path, body=body, headers={
            "Content-Type": "application/json", **(headers or {})})
        reply = connection.getresponse()
        return reply.status, reply.headers.get_all("Set-Cookie") or [], reply.read()
    finally:
        connection.close()


def cookie_values(set_cookies: list[str]) -> dict[str, str]:
    return {header.split("=", 1)[0]: header.split("=", 1)[1].split(";")[0]
            for header in set_cookies}


@pytest.mark.gen_test(timeout=120)
async def test_a_browser_session_through_nginx_http_and_https(cfg, api):
    """Secure cookies over HTTPS only; the Origin check sees the origin the browser used (nginx
    passes the scheme and the Host with its port); the cookie's first page comes from the edge."""
    await user_with_todos(api, "edge_session")
    credentials = '{"username": "edge_session", "password": "correct horse"}'
    for scheme, port in (("http", cfg.http_port), ("https", cfg.https_port)):
        status, set_cookies, _ = await asyncio.to_thread(
            session_request, cfg, "POST", "/session", scheme=scheme, body=credentials)
        assert status == 201
        assert len(set_cookies) == 2
        for header in set_cookies:
            assert ("; Secure" in header) == (scheme == "https"), header
        values = cookie_values(set_cookies)
        cookie = {"Cookie": f"session={values['session']}; _xsrf={values['_xsrf']}"}
        write = {**cookie, "X-XSRFToken": values["_xsrf"]}
        for origin, wanted in ((f"{scheme}://127.0.0.1:{port}", 201),
                               (f"{scheme}://127.0.0.1:{port + 1}", 403),
                               (f"{'https' if scheme == 'http' else 'http'}://127.0.0.1:{port}",
                                403)):
            status, _, body = await asyncio.to_thread(
                session_request, cfg, "POST", "/todo", scheme=scheme,
                body=f'{{"content": "from {origin}"}}', headers={**write, "Origin": origin})
            assert status == wanted, (origin, body)
    token = values["session"]
    await until_edge_serves(cfg, api, token)
    before = await asyncio.to_thread(instance_reads, cfg)
    for _ in range(10):
        status, headers, body = await asyncio.to_thread(
            raw_get, cfg, {"Cookie": f"session={token}"})
        assert status == 200
        assert b"from https://127.0.0.1" in body
        assert "set-cookie" not in dict(headers)
    assert await asyncio.to_thread(instance_reads, cfg) == before
    status, _, _ = await asyncio.to_thread(
        session_request, cfg, "DELETE", "/session", headers={**write})
    assert status == 204
    status, _, _ = await asyncio.to_thread(raw_get, cfg, {"Cookie": f"session={token}"})
    assert status == 401
