"""An overloaded instance answers a quick JSON 503 with Retry-After instead of queueing."""

from __future__ import annotations

import asyncio
from urllib.parse import urlsplit

import pytest

from tests.conftest import another_instance, error_of, make_settings


async def hold_a_request(base_url: str, token: str) -> asyncio.StreamWriter:
    """A request that stays in flight: its headers announce a body that never comes."""
    where = urlsplit(base_url)
    _, writer = await asyncio.open_connection(where.hostname, where.port)
    writer.write(
        b"POST /todo HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Authorization: Bearer " + token.encode() + b"\r\nContent-Length: 100\r\n\r\n{"
    )
    await writer.drain()
    return writer


@pytest.mark.gen_test(timeout=60)
async def test_past_max_in_flight_a_write_is_refused_and_changes_nothing(mongo_uri, redis_url):
    async with another_instance(make_settings(mongo_uri, redis_url, max_in_flight=1)) as api:
        token = await api.register("busy")
        held = await hold_a_request(api.base_url, token)
        try:
            for _ in range(50):  # until the instance has read the held request's headers
                refused = await api.post("/todo", token=token, json_body={"content": "shed"})
                if refused.status != 201:
                    break
                await api.delete(f"/todo/{refused.json['id']}", token=token)
                await asyncio.sleep(0.05)
            assert error_of(refused) == (503, "server busy, try again shortly")
            assert refused.body == (
                b'{"error": {"status": 503, "message": "server busy, try again shortly"}}'
            )
            assert refused.headers["Retry-After"] == "1"
            # Health checks still answer: an overloaded instance is alive.
            assert (await api.get("/healthz")).status == 200
        finally:
            held.close()
        for _ in range(50):  # until the instance has seen the held connection go
            listed = await api.get("/todo", token=token)
            if listed.status == 200:
                break
            await asyncio.sleep(0.05)
        assert listed.status == 200
        assert listed.json["data"] == []  # the refused write stored nothing
