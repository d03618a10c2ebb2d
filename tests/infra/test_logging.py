"""JSON log lines and request ids: echoed or generated, and carried by every line of a request."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re
import signal
import sys
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest

from scripts.local_services import free_port
from server.infra import logs
from server.infra.settings import Settings
from tests.conftest import Api, error_of, make_settings
from tests.infra.test_metrics import serving, without_mongodb
from tests.web.test_main import server_env, wait_until_healthy

GENERATED_ID = re.compile(r"[0-9a-f]{32}")
ISO_UTC = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


class JsonLines:
    """What the JSON handler wrote, one parsed object per line."""

    def __init__(self) -> None:
        self.stream = io.StringIO()

    def all(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.stream.getvalue().splitlines()]

    def access(self) -> list[dict[str, Any]]:
        return [line for line in self.all() if line["logger"] == "todo.access"]

    def of(self, request_id: str) -> list[dict[str, Any]]:
        return [line for line in self.all() if line.get("request_id") == request_id]


@pytest.fixture
def log_lines() -> Iterator[JsonLines]:
    """The service's log lines (loggers under `todo`), through the production handler."""
    lines = JsonLines()
    handler = logs.json_handler(lines.stream)
    logger = logging.getLogger("todo")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield lines
    logger.removeHandler(handler)
    logger.setLevel(level)


@pytest.fixture
def settings(mongo_uri: str, redis_url: str) -> Settings:
    """Every request sampled, so that the tests below can read access lines' contents (by
    default an instance logs only 5xx, slow requests and a 1% sample: see the tests at the end)."""
    return make_settings(mongo_uri, redis_url, access_log_sample=1.0)


def test_request_ids_must_be_short_plain_tokens():
    assert logs.request_id_from("nginx-1a2b.C_3") == "nginx-1a2b.C_3"
    assert logs.request_id_from("x" * 128) == "x" * 128
    for insane in (None, "", "x" * 129, "two words", "line\nbreak", 'quote"', "a,b", "é"):
        assert GENERATED_ID.fullmatch(logs.request_id_from(insane)), insane


def test_a_record_becomes_one_json_line_with_its_traceback_as_a_string():
    stream = io.StringIO()
    logger = logging.getLogger("todo.test-formatter")
    logger.addHandler(logs.json_handler(stream))
    logger.propagate = False
    try:
        try:
            1 / 0  # noqa: B018
        except ZeroDivisionError:
            logger.exception("failed on %s", "purpose\nwith a newline")
    finally:
        logger.handlers.clear()
        logger.propagate = True
    [line] = stream.getvalue().splitlines()
    entry = json.loads(line)
    assert ISO_UTC.fullmatch(entry["time"])
    assert entry["level"] == "ERROR"
    assert entry["logger"] == "todo.test-formatter"
    assert entry["message"] == "failed on purpose\nwith a newline"
    assert "request_id" not in entry  # logged outside any request
    assert entry["exc_info"].startswith("Traceback")
    assert "ZeroDivisionError" in entry["exc_info"]


@pytest.mark.gen_test
async def test_a_sane_request_id_is_echoed_and_logged(api, log_lines):
    reply = await api.get("/healthz", headers={"X-Request-ID": "edge-42.a_b"})
    assert reply.headers["X-Request-ID"] == "edge-42.a_b"
    [line] = log_lines.of("edge-42.a_b")
    assert line["logger"] == "todo.access"
    assert line["level"] == "INFO"
    assert (line["route"], line["method"], line["path"], line["status"]) == (
        "/healthz", "GET", "/healthz", 200
    )
    assert line["user_id"] is None
    assert line["remote_ip"] == "127.0.0.1"
    assert isinstance(line["duration_ms"], float)
    assert ISO_UTC.fullmatch(line["time"])


@pytest.mark.gen_test
@pytest.mark.parametrize("sent", [None, "x" * 300, "has spaces", "a\tb"])
async def test_a_missing_or_insane_request_id_is_replaced(api, log_lines, sent):
    headers = {} if sent is None else {"X-Request-ID": sent}
    reply = await api.get("/healthz", headers=headers)
    request_id = reply.headers["X-Request-ID"]
    assert GENERATED_ID.fullmatch(request_id)
    [line] = log_lines.access()
    assert line["request_id"] == request_id


@pytest.mark.gen_test
async def test_error_replies_carry_the_request_id_too(api):
    token = await api.register("errors")
    answers = {
        "unknown path": await api.get("/nowhere", headers={"X-Request-ID": "r1"}),
        "no token": await api.get("/todo", headers={"X-Request-ID": "r2"}),
        "bad method": await api.delete("/todo", headers={"X-Request-ID": "r3"}),
        "bad input": await api.post(
            "/todo", token=token, json_body={"content": ""}, headers={"X-Request-ID": "r4"}
        ),
        "too large": await api.post(
            "/todo", token=token, body=b"x" * 70_000, headers={"X-Request-ID": "r5"}
        ),
    }
    assert {name: reply.status for name, reply in answers.items()} == {
        "unknown path": 404, "no token": 401, "bad method": 405, "bad input": 400,
        "too large": 413,
    }
    for i, reply in enumerate(answers.values(), 1):
        error_of(reply)
        assert reply.headers["X-Request-ID"] == f"r{i}"


@pytest.mark.gen_test
async def test_access_lines_carry_route_status_and_the_authenticated_user(api, log_lines):
    created_user = await api.post(
        "/users", json_body={"username": "logged", "password": "correct horse"}
    )
    issued = await api.post(
        "/tokens", json_body={"username": "logged", "password": "correct horse"}
    )
    token = issued.json["token"]
    todo = await api.post("/todo", token=token, json_body={"content": "in the log"})
    headers = {"X-Request-ID": "read-1"}
    await api.get(f"/todo/{todo.json['id']}", token=token, headers=headers)
    await api.get("/todo/0123456789abcdef01234567", token=token, headers={"X-Request-ID": "nf"})
    await api.get("/todo", headers={"X-Request-ID": "anon"})

    [read] = log_lines.of("read-1")
    assert read["user_id"] == created_user.json["id"]
    assert (read["route"], read["path"], read["status"]) == (
        "/todo/{todo_id}", f"/todo/{todo.json['id']}", 200
    )
    [missing] = log_lines.of("nf")
    assert (missing["route"], missing["status"], missing["level"]) == (
        "/todo/{todo_id}", 404, "WARNING"
    )
    assert missing["user_id"] == created_user.json["id"]
    [anonymous] = log_lines.of("anon")
    assert (anonymous["status"], anonymous["user_id"]) == (401, None)
    routes = [(line["method"], line["route"], line["status"]) for line in log_lines.access()]
    assert routes[:3] == [("POST", "/users", 201), ("POST", "/tokens", 201), ("POST", "/todo", 201)]


@pytest.mark.gen_test(timeout=60)
async def test_remote_ip_comes_from_nginx_headers_when_xheaders_is_on(
    mongo_uri, redis_url, log_lines
):
    settings = make_settings(mongo_uri, redis_url, access_log_sample=1.0)
    async with serving(settings, xheaders=True) as api:
        await api.get("/healthz", headers={"X-Real-IP": "203.0.113.7", "X-Request-ID": "ip"})
    [line] = log_lines.of("ip")
    assert line["remote_ip"] == "203.0.113.7"


@pytest.mark.gen_test(timeout=60)
async def test_a_warning_logged_while_handling_a_request_carries_its_id(
    mongo_uri, redis_url, log_lines
):
    async with serving(without_mongodb(mongo_uri, redis_url)) as api:
        refused = await api.post(
            "/users", json_body={"username": "nobody", "password": "correct horse"},
            headers={"X-Request-ID": "mongo-down-1"},
        )
    assert error_of(refused) == (503, "database unavailable, try again shortly")
    assert refused.headers["X-Request-ID"] == "mongo-down-1"
    lines = log_lines.of("mongo-down-1")
    warning = next(line for line in lines if line["logger"] == "todo.api")
    assert warning["level"] == "WARNING"
    assert "POST /users -> 503" in warning["message"]
    [access] = [line for line in lines if line["logger"] == "todo.access"]
    assert (access["status"], access["level"]) == (503, "ERROR")


@pytest.mark.gen_test(timeout=60)
async def test_the_server_process_writes_json_lines(mongo_uri, redis_url):
    port = free_port()
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "server", "--port", str(port),
        env=server_env(mongo_uri, redis_url, TODO_ACCESS_LOG_SAMPLE="1"),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )
    api = Api(f"http://127.0.0.1:{port}")
    try:
        await wait_until_healthy(api)
        await api.get("/healthz", headers={"X-Request-ID": "from-main"})
    finally:
        api.close()
        process.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(process.communicate(), 30)
    entries = [json.loads(line) for line in err.decode().splitlines()]
    messages = [(e["logger"], e["message"]) for e in entries]
    assert ("todo", f"listening on http://127.0.0.1:{port}") in messages
    assert ("todo", "stopped") in messages
    [access] = [e for e in entries if e.get("request_id") == "from-main"]
    assert access["route"] == "/healthz"


@pytest.mark.gen_test(timeout=60)
async def test_by_default_a_quick_success_or_client_error_is_not_logged(
    mongo_uri, redis_url, log_lines
):
    # nginx's access log has a line with the request id for every request already.
    settings = make_settings(mongo_uri, redis_url, access_log_sample=0.0)
    async with serving(settings) as api:
        assert (await api.get("/healthz", headers={"X-Request-ID": "quick"})).status == 200
        assert (await api.get("/todo", headers={"X-Request-ID": "no-token"})).status == 401
    assert log_lines.access() == []


@pytest.mark.gen_test(timeout=60)
async def test_a_slow_request_is_logged_as_a_warning_with_its_id(mongo_uri, redis_url, log_lines):
    settings = make_settings(mongo_uri, redis_url, access_log_sample=0.0, slow_request_ms=1)
    async with serving(settings) as api:
        # Hashing a password with argon2 takes far longer than a millisecond.
        created = await api.post(
            "/users", json_body={"username": "slowpoke", "password": "correct horse"},
            headers={"X-Request-ID": "slow-1"},
        )
    assert created.status == 201
    [line] = log_lines.of("slow-1")
    assert (line["logger"], line["level"], line["status"]) == ("todo.access", "WARNING", 201)
    assert line["duration_ms"] >= 1


@pytest.mark.gen_test(timeout=60)
async def test_a_server_error_is_always_logged_with_its_id(mongo_uri, redis_url, log_lines):
    settings = without_mongodb(mongo_uri, redis_url)
    async with serving(replace(settings, access_log_sample=0.0)) as api:
        refused = await api.post(
            "/users", json_body={"username": "nobody", "password": "correct horse"},
            headers={"X-Request-ID": "five-oh-three"},
        )
    assert refused.status == 503
    [access] = [line for line in log_lines.of("five-oh-three") if line["logger"] == "todo.access"]
    assert (access["status"], access["level"], access["route"]) == (503, "ERROR", "/users")
