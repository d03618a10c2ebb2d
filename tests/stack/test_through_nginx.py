"""What a client sees only through nginx: links that point back at the address it used, a
keep-alive connection that survives errors, and a database outage answered once."""

from __future__ import annotations

import asyncio
import http.client
import json
import re
import socket
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from scripts.stack.config import StackConfig
from scripts.stack.supervisor import Supervisor
from tests.conftest import Api, error_of


@pytest.fixture
def cfg(nginx_stack: StackConfig) -> StackConfig:
    """The session's stack, which the contract tests share (tests/conftest.py)."""
    return nginx_stack


@pytest.fixture
def api(cfg: StackConfig) -> Iterator[Api]:
    client = Api(cfg.base_url)
    yield client
    client.close()


def _tls_context() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def _connection(scheme: str, port: int) -> http.client.HTTPConnection:
    if scheme == "https":
        return http.client.HTTPSConnection("127.0.0.1", port, timeout=10, context=_tls_context())
    return http.client.HTTPConnection("127.0.0.1", port, timeout=10)


def _get(connection: http.client.HTTPConnection, url: str, token: str) -> tuple[int, dict]:
    connection.request("GET", url, headers={"Authorization": f"Bearer {token}"})
    response = connection.getresponse()
    return response.status, json.loads(response.read())


@pytest.mark.parametrize("scheme", ["http", "https"])
@pytest.mark.gen_test(timeout=60)
async def test_next_links_point_at_the_address_the_client_used(cfg, api, scheme):
    token = await api.register(f"links_{scheme}")
    for number in range(3):
        created = await api.post("/todo", token=token, json_body={"content": f"t{number}"})
        assert created.status == 201
    port = cfg.https_port if scheme == "https" else cfg.http_port

    def follow() -> list[str]:
        connection = _connection(scheme, port)
        seen: list[str] = []
        url: str | None = "/todo?limit=1"
        try:
            while url:
                status, page = _get(connection, url, token)
                assert status == 200, page
                seen.extend(todo["content"] for todo in page["data"])
                link = page["next"]
                url = None
                if link:
                    # The scheme, host and port the client used, not nginx's idea of them.
                    assert link.startswith(f"{scheme}://127.0.0.1:{port}/todo?"), link
                    url = link.split(f":{port}", 1)[1]
        finally:
            connection.close()
        return seen

    assert await asyncio.to_thread(follow) == ["t2", "t1", "t0"]


@pytest.mark.gen_test(timeout=60)
async def test_a_request_without_a_host_header_gets_links_to_the_address_it_reached(cfg, api):
    """HTTP/1.0 clients may send no Host: the link names the address and port they reached."""
    token = await api.register("links_no_host")
    for number in range(2):
        created = await api.post("/todo", token=token, json_body={"content": f"t{number}"})
        assert created.status == 201

    def get_without_host() -> bytes:
        request = (b"GET /todo?limit=1 HTTP/1.0\r\nAuthorization: Bearer " + token.encode()
                   + b"\r\n\r\n")
        answer = b""
        with socket.create_connection(("127.0.0.1", cfg.http_port), timeout=10) as sock:
            sock.sendall(request)
            while chunk := sock.recv(65536):
                answer += chunk
        return answer

    answer = await asyncio.to_thread(get_without_host)
    body = json.loads(answer.split(b"\r\n\r\n", 1)[1])
    assert body["next"].startswith(f"http://127.0.0.1:{cfg.http_port}/todo?")


# Errors decided before the body is read; each must leave the connection usable.
EARLY_ERRORS = [
    ("GET", "/todo", None, {}, 401),
    ("GET", "/todo", None, {"Authorization": "Bearer not-a-token"}, 401),
    ("POST", "/todo", b'{"content": "x"}', {"Content-Type": "application/json"}, 401),
    ("DELETE", "/todo", None, {}, 405),
    ("GET", "/no/such/path", None, {}, 404),
    ("POST", "/no/such/path", b'{"a": 1}', {"Content-Type": "application/json"}, 404),
]


def assert_connection_survives_early_errors(port: int, token: str) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.connect()
        first_socket = connection.sock
        for method, path, body, headers, status in EARLY_ERRORS * 2:
            connection.request(method, path, body=body, headers=headers)
            response = connection.getresponse()
            reply = json.loads(response.read())
            assert (response.status, reply["error"]["status"]) == (status, status)
            assert response.getheader("Connection") != "close", (method, path)
        status, page = _get(connection, "/todo", token)
        assert status == 200, page
        # One TCP connection served them all: http.client reconnects silently otherwise.
        assert connection.sock is first_socket
    finally:
        connection.close()


@pytest.mark.gen_test(timeout=60)
async def test_a_keepalive_connection_survives_early_errors_through_nginx(cfg, api):
    token = await api.register("keepalive_nginx")
    await asyncio.to_thread(assert_connection_survives_early_errors, cfg.http_port, token)
    await asyncio.to_thread(assert_connection_survives_early_errors, cfg.ports[0], token)


@pytest.mark.gen_test(timeout=60)
async def test_a_body_too_large_to_read_is_refused_with_connection_close(cfg, api):
    """Not worth reading: the instance says it closes, so no client reuses the connection."""
    token = await api.register("too_large_close")

    def post_large() -> tuple[int, str | None, int]:
        connection = http.client.HTTPConnection("127.0.0.1", cfg.ports[0], timeout=10)
        try:
            connection.request("POST", "/todo", body=b"x" * (cfg.max_body_size + 1),
                               headers={"Authorization": f"Bearer {token}"})
            response = connection.getresponse()
            response.read()
            closing = response.getheader("Connection")
            # http.client honours the close and opens a new connection for the next request.
            status, _page = _get(connection, "/todo", token)
            return response.status, closing, status
        finally:
            connection.close()

    assert await asyncio.to_thread(post_large) == (413, "close", 200)


# Every other request has a bad token; each thread counts the statuses it got.
WRK_SCRIPT = """
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args) statuses = {}; n = 0 end
function request()
  n = n + 1
  local token = (n %% 2 == 0) and "%s" or "not-a-token"
  return wrk.format("GET", "/todo", {["Authorization"] = "Bearer " .. token})
end
function response(status, headers, body) statuses[status] = (statuses[status] or 0) + 1 end
function done(summary, latency, requests)
  for _, thread in ipairs(threads) do
    for status, count in pairs(thread:get("statuses")) do
      io.write(string.format("status %%d %%d\\n", status, count))
    end
  end
end
"""


@pytest.mark.gen_test(timeout=60)
async def test_wrk_with_half_401s_through_nginx_gets_no_502(cfg, api, tmp_path: Path):
    token = await api.register("wrk_401")
    script = tmp_path / "half401.lua"
    script.write_text(WRK_SCRIPT % token)
    result = await asyncio.to_thread(
        subprocess.run,
        ["wrk", "-t2", "-c20", "-d2s", "--timeout", "5s", "-s", str(script), cfg.base_url + "/"],
        capture_output=True, text=True, timeout=30, check=True,
    )
    statuses = {int(status): int(count) for status, count in
                re.findall(r"^status (\d+) (\d+)$", result.stdout, re.MULTILINE)}
    # A connection an instance dropped would surface as nginx's 502 or a wrk socket error.
    assert set(statuses) == {200, 401}, result.stdout
    assert min(statuses.values()) > 50, result.stdout
    assert "Socket errors" not in result.stdout, result.stdout


@pytest.mark.gen_test(timeout=120)
async def test_a_database_outage_is_answered_by_one_instance_not_retried(cfg, api):
    """Every instance shares the database: nginx must not try the next one on its 503."""
    token = await api.register("outage")
    supervisor = Supervisor(cfg)
    await asyncio.to_thread(supervisor.ctl, "stop", "mongod")
    try:
        reply = await api.get("/todo?start=1", token=token)
        assert error_of(reply) == (503, "database unavailable, try again shortly")
        request_id = reply.headers["X-Request-ID"]
        await asyncio.sleep(1.5)  # the access log's flush interval
        entries = [json.loads(line) for line in
                   cfg.path("log", "nginx-access.log").read_text().splitlines()
                   if request_id in line]
    finally:
        await asyncio.to_thread(supervisor.ctl, "start", "mongod")
    assert len(entries) == 1, entries
    # One instance was asked, once (a retry lists every attempt: "a, b" and "503, 503").
    assert entries[0]["upstream_status"] == "503", entries
    assert "," not in entries[0]["upstream"], entries
