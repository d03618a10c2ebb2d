"""GET /metrics: Prometheus text with requests by route, latencies, cache and dependency errors."""

from __future__ import annotations

from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from scripts.local_services import free_port
from server.infra.settings import Settings
from server.web.metrics import Metrics, route_label
from tests.conftest import Api, another_instance, error_of, make_settings

MISSING_ID = "0123456789abcdef01234567"


async def scrape(api: Api) -> list[Sample]:
    """Every sample /metrics exposes, parsed as Prometheus text (no token needed)."""
    response = await api.client.fetch(api.base_url + "/metrics", raise_error=False)
    assert response.code == 200
    assert response.headers["Content-Type"].startswith("text/plain")
    text = response.body.decode()
    return [sample for family in text_string_to_metric_families(text) for sample in family.samples]


def value(samples: list[Sample], name: str, **labels: str) -> float:
    """The sum of the samples called `name` whose labels include `labels` (0 if none)."""
    return sum(
        s.value for s in samples
        if s.name == name and labels.items() <= s.labels.items()
    )


def serving(settings: Settings, **server_options: Any) -> Any:
    """An instance for `settings` without creating indexes first, so MongoDB may be down."""
    return another_instance(settings, indexes=False, **server_options)


def without_mongodb(mongo_uri: str, redis_url: str) -> Settings:
    """Settings whose MongoDB is a closed port: every MongoDB call fails fast."""
    return make_settings(
        f"mongodb://127.0.0.1:{free_port()}", redis_url,
        mongo_timeout_ms=200, mongo_op_timeout_ms=500,
    )


def test_route_labels_are_route_patterns():
    assert route_label(r"/todo/(?P<todo_id>[^/]+)/finish") == "/todo/{todo_id}/finish"
    assert route_label(r"/todo$") == "/todo"


def test_a_handler_class_on_two_routes_is_refused(services):
    from handlers.health import HealthHandler

    with pytest.raises(ValueError, match="more than one route"):
        Metrics(services, [(r"/a", HealthHandler), (r"/b", HealthHandler)])


@pytest.mark.gen_test
async def test_requests_are_counted_by_route_pattern_method_and_status(api):
    token = await api.register("counted")
    created = await api.post("/todo", token=token, json_body={"content": "count me"})
    assert created.status == 201
    assert (await api.get(f"/todo/{MISSING_ID}", token=token)).status == 404
    assert (await api.get(f"/todo/{created.json['id']}", token=token)).status == 200
    assert (await api.get("/no/such/path")).status == 404
    assert (await api.request("BREW", "/todo")).status == 405

    samples = await scrape(api)
    requests = "todo_http_requests_total"
    assert value(samples, requests, route="/todo", method="POST", status="201") == 1
    assert value(samples, requests, route="/todo/{todo_id}", method="GET", status="404") == 1
    assert value(samples, requests, route="/todo/{todo_id}", method="GET", status="200") == 1
    assert value(samples, requests, route="/users", method="POST", status="201") == 1
    assert value(samples, requests, route="unmatched", method="GET", status="404") == 1
    # Any method a client invents is one label value, not a new series each.
    assert value(samples, requests, route="/todo", method="other", status="405") == 1
    routes = {s.labels["route"] for s in samples if s.name == requests}
    assert routes == {"/users", "/tokens", "/todo", "/todo/{todo_id}", "unmatched"}


@pytest.mark.gen_test
async def test_latency_histogram_has_buckets_per_route(api):
    await api.get("/healthz")
    await api.get("/healthz")
    samples = await scrape(api)
    histogram = "todo_http_request_duration_seconds"
    buckets = [
        s for s in samples
        if s.name == f"{histogram}_bucket" and s.labels["route"] == "/healthz"
    ]
    assert {s.labels["method"] for s in buckets} == {"GET"}
    assert len(buckets) > 5
    assert "+Inf" in {s.labels["le"] for s in buckets}
    assert value(samples, f"{histogram}_bucket", route="/healthz", le="+Inf") == 2
    assert value(samples, f"{histogram}_count", route="/healthz") == 2
    assert value(samples, f"{histogram}_sum", route="/healthz") > 0


@pytest.mark.gen_test
async def test_cache_hits_and_misses_move_when_the_first_page_is_read_twice(api):
    token = await api.register("cached")
    await api.post("/todo", token=token, json_body={"content": "on the first page"})
    before = await scrape(api)
    assert (await api.get("/todo", token=token)).status == 200
    assert (await api.get("/todo", token=token)).status == 200
    after = await scrape(api)
    for name in ("todo_cache_misses_total", "todo_cache_hits_total"):
        assert value(after, name) - value(before, name) == 1, name
    assert value(after, "todo_redis_errors_total") == 0


@pytest.mark.gen_test(timeout=60)
async def test_redis_errors_are_counted(mongo_uri):
    settings = make_settings(mongo_uri, f"redis://127.0.0.1:{free_port()}/0", redis_timeout=0.2)
    async with another_instance(settings) as api:
        token = await api.register("no-redis")
        assert (await api.get("/todo", token=token)).status == 200
        samples = await scrape(api)
    assert value(samples, "todo_redis_errors_total") >= 1
    assert value(samples, "todo_http_requests_total", route="/todo", status="200") == 1


@pytest.mark.gen_test(timeout=60)
async def test_requests_answered_503_for_mongodb_are_counted(mongo_uri, redis_url):
    async with serving(without_mongodb(mongo_uri, redis_url)) as api:
        before = await scrape(api)
        assert value(before, "todo_mongodb_errors_total", kind="unavailable") == 0
        refused = await api.post(
            "/users", json_body={"username": "nobody", "password": "correct horse"}
        )
        assert error_of(refused) == (503, "database unavailable, try again shortly")
        samples = await scrape(api)
    assert value(samples, "todo_mongodb_errors_total", kind="unavailable") == 1
    assert value(samples, "todo_mongodb_errors_total", kind="other") == 0
    assert value(samples, "todo_http_requests_total", route="/users", status="503") == 1


@pytest.mark.gen_test
async def test_each_application_counts_only_its_own_requests(api, settings):
    await api.get("/healthz")
    async with another_instance(make_settings(settings.mongo_uri, settings.redis_url)) as other:
        samples = await scrape(other)
    assert value(samples, "todo_http_requests_total", route="/healthz") == 0
