"""A bare instance on an empty database makes its own indexes: no out-of-band step is needed for
usernames and Idempotency-Keys to stay unique, and writes that need an index wait for it."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from pymongo import AsyncMongoClient

from scripts.local_services import free_port, mongod_server
from server.domain.index_keeper import INDEXES_PENDING
from server.domain.indexes import INDEXES
from server.web.services import open_services
from tests.conftest import another_instance, error_of, make_settings

CREDENTIALS = {"username": "alice", "password": "correct horse"}


async def index_names(settings, collection: str) -> set[str]:
    client: AsyncMongoClient = AsyncMongoClient(settings.mongo_uri)
    try:
        return {index["name"] async for index in
                await client[settings.db_name][collection].list_indexes()}
    finally:
        await client.close()


@pytest.fixture
def fresh(io_loop, mongo_uri, redis_url):
    """Settings naming an empty database that no index step has touched; dropped afterwards."""
    settings = make_settings(mongo_uri, redis_url)
    yield settings

    async def drop() -> None:
        client: AsyncMongoClient = AsyncMongoClient(settings.mongo_uri)
        try:
            await client.drop_database(settings.db_name)
        finally:
            await client.close()

    io_loop.run_sync(drop, timeout=30)


@pytest.mark.gen_test(timeout=60)
async def test_a_bare_instance_on_an_empty_database_refuses_a_taken_username(fresh):
    async with another_instance(fresh, indexes=False) as api:
        replies = await asyncio.gather(*[api.post("/users", json_body=CREDENTIALS)
                                         for _ in range(8)])
        assert sorted(reply.status for reply in replies) == [201] + [409] * 7
        again = await api.post("/users", json_body=CREDENTIALS)
        assert error_of(again) == (409, "username 'alice' is already taken")
    assert "username_unique" in await index_names(fresh, "users")


@pytest.mark.gen_test(timeout=60)
async def test_a_bare_instance_on_an_empty_database_honours_idempotency_keys(fresh):
    async with another_instance(fresh, indexes=False) as api:
        token = await api.register("keys")
        replies = await asyncio.gather(*[
            api.post("/todo", token=token, json_body={"content": "once"},
                     headers={"Idempotency-Key": "same-key"})
            for _ in range(8)
        ])
        assert {reply.status for reply in replies} == {201}
        assert len({reply.json["id"] for reply in replies}) == 1
        listed = await api.get("/todo", token=token)
        assert [todo["content"] for todo in listed.json["data"]] == ["once"]


@pytest.mark.gen_test(timeout=60)
async def test_instances_starting_together_make_every_index_once(fresh):
    instances = [open_services(fresh) for _ in range(3)]
    try:
        await asyncio.gather(*[services.indexes.ready(name) for services in instances
                               for name in INDEXES])
        assert all(services.indexes.done for services in instances)
    finally:
        await asyncio.gather(*[services.close() for services in instances])
    for collection, models in INDEXES.items():
        expected = {model.document["name"] for model in models}
        assert expected <= await index_names(fresh, collection)


@pytest.mark.gen_test(timeout=120)
async def test_writes_wait_for_a_database_that_comes_up_after_the_instance(
    redis_url, tmp_path: Path
):
    """Started before MongoDB: registrations get a JSON 503 (never a duplicate) until the
    instance has made its indexes, then work; nobody ran todo-create-indexes."""
    port = free_port()
    settings = make_settings(f"mongodb://127.0.0.1:{port}", redis_url, mongo_timeout_ms=500)
    mongod = mongod_server(tmp_path / "mongo", port)
    async with another_instance(settings, indexes=False) as api:
        early = await api.post("/users", json_body=CREDENTIALS)
        assert early.status == 503
        assert error_of(early)[1] in (INDEXES_PENDING, "database unavailable, try again shortly")
        await asyncio.to_thread(mongod.start)
        try:
            for _ in range(100):
                first = await api.post("/users", json_body=CREDENTIALS)
                if first.status != 503:
                    break
                await asyncio.sleep(0.2)
            assert first.status == 201, first.json
            assert (await api.post("/users", json_body=CREDENTIALS)).status == 409
        finally:
            await asyncio.to_thread(mongod.stop)
