"""`python -m server` as an operator runs it: start-up errors, readiness, graceful SIGTERM."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator

import pytest
from tornado.httpclient import AsyncHTTPClient, HTTPRequest

from scripts.local_services import free_port
from tests.conftest import TEST_SECRET, Api, redis_db


def server_env(mongo_uri: str, redis_url: str, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update({
        "TODO_MONGO_URI": mongo_uri,
        "TODO_REDIS_URL": redis_url,
        "TODO_BROKER_URL": redis_db(redis_url, 1),
        "TODO_RESULT_BACKEND": redis_db(redis_url, 2),
        "TODO_DB_NAME": f"todo_main_{uuid.uuid4().hex[:8]}",
        "TODO_REDIS_PREFIX": f"todo-main:{uuid.uuid4().hex[:8]}:",
        "TODO_SECRET": TEST_SECRET,
    })
    env.update(extra)
    return env


def run_server(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "server", *args], env=env, capture_output=True, text=True,
        timeout=60, check=False,
    )


@pytest.fixture
def instance(mongo_uri: str, redis_url: str) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "server", "--port", str(port)],
        env=server_env(mongo_uri, redis_url), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    yield process, port
    if process.poll() is None:
        process.kill()
    process.wait(10)
    process.stderr.close()


async def wait_until_healthy(api: Api) -> None:
    for _ in range(600):
        try:
            if (await api.get("/healthz", request_timeout=2)).status == 200:
                return
        except ConnectionError:
            pass
        await asyncio.sleep(0.05)
    raise AssertionError("the instance never answered /healthz")


def test_a_bad_setting_stops_start_up_with_one_line(mongo_uri, redis_url):
    result = run_server("--port=not-a-port", env=server_env(mongo_uri, redis_url))
    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == [
        "todo-server: --port=not-a-port: value of the wrong type"
    ]


def test_a_port_in_use_is_named_in_one_line(mongo_uri, redis_url):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_server("--port", str(port), env=server_env(mongo_uri, redis_url))
    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-1] == (
        f"todo-server: port {port} on 127.0.0.1 is already in use"
    )


@pytest.mark.gen_test(timeout=60)
async def test_sigterm_lets_an_in_flight_request_finish_then_exits_zero(instance):
    process, port = instance
    api = Api(f"http://127.0.0.1:{port}")
    await wait_until_healthy(api)
    token = await api.register("drainer")

    first_half = asyncio.Event()
    release = asyncio.Event()

    async def slow_body(write):
        await write(b'{"content": "written ')
        first_half.set()
        await release.wait()
        await write(b'during shutdown"}')

    request = HTTPRequest(
        f"http://127.0.0.1:{port}/todo", method="POST", body_producer=slow_body,
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"},
        request_timeout=30,
    )
    client = AsyncHTTPClient(force_instance=True)
    in_flight = asyncio.ensure_future(client.fetch(request, raise_error=False))
    await first_half.wait()
    await asyncio.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    await asyncio.sleep(0.5)
    with pytest.raises(ConnectionError):  # no new connections once draining
        await api.get("/healthz", request_timeout=2)
    release.set()
    response = await in_flight
    assert response.code == 201
    assert json.loads(response.body)["content"] == "written during shutdown"
    for _ in range(100):
        if process.poll() is not None:
            break
        await asyncio.sleep(0.1)
    assert process.returncode == 0
    assert b"stopped" in process.stderr.read()
    client.close()
    api.close()
