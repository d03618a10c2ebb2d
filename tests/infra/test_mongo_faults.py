"""MongoDB down: a quick JSON 503 instead of a hang, and recovery without a restart."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from scripts.local_services import LocalServer, free_port, mongod_server
from server.infra.settings import Settings
from tests.conftest import error_of, make_settings


@pytest.fixture
def own_mongo(tmp_path: Path) -> Iterator[LocalServer]:
    server = mongod_server(tmp_path / "mongo", free_port())
    server.start()
    yield server
    server.stop()


@pytest.fixture
def settings(own_mongo: LocalServer, redis_url: str) -> Settings:
    return make_settings(f"mongodb://127.0.0.1:{own_mongo.port}", redis_url)


@pytest.mark.gen_test(timeout=120)
async def test_mongodb_killed_gives_503_then_recovers_with_every_acknowledged_write(
    api, own_mongo
):
    token = await api.register("durable")
    acknowledged = []
    for i in range(20):
        reply = await api.post("/todo", token=token, json_body={"content": f"kept {i}"})
        assert reply.status == 201
        acknowledged.append(reply.json["id"])

    own_mongo.stop(sig=signal.SIGKILL)

    refused = await api.post("/todo", token=token, json_body={"content": "lost?"},
                             request_timeout=10)
    assert error_of(refused) == (503, "database unavailable, try again shortly")
    assert refused.headers["Retry-After"] == "1"
    unreachable = await api.get(f"/todo/{acknowledged[0]}", token=token, request_timeout=10)
    assert unreachable.status == 503
    not_ready = await api.get("/readyz", request_timeout=10)
    assert not_ready.status == 503
    assert not_ready.json["checks"] == {"mongodb": "unavailable", "redis": "ok"}

    own_mongo.start()
    for _ in range(60):
        reply = await api.post("/todo", token=token, json_body={"content": "after"})
        if reply.status == 201:
            break
        assert reply.status == 503
        await asyncio.sleep(0.5)
    assert reply.status == 201
    listed = await api.get("/todo?limit=100", token=token)
    ids = [todo["id"] for todo in listed.json["data"]]
    assert set(acknowledged) <= set(ids)
    assert [t["content"] for t in listed.json["data"]].count("lost?") == 0
    assert (await api.get("/readyz")).status == 200
