"""Prometheus metrics of one instance, in a registry of its own.

A registry per application, not prometheus_client's global one: the tests build many
applications in one process, and each must count only its own requests.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from tornado.web import RequestHandler

from server.infra.replica_status import ReplicaSetStatus
from server.web.services import Services

UNMATCHED = "unmatched"
# Label values must stay few: a client can send any method and any path, so both are mapped
# onto a fixed set (the route pattern, never the raw path).
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
NAMED_GROUP = re.compile(r"\(\?P<(\w+)>[^()]*\)")


def route_label(pattern: str) -> str:
    """The route a Tornado pattern names: `/todo/(?P<todo_id>[^/]+)` is `/todo/{todo_id}`."""
    return NAMED_GROUP.sub(r"{\1}", pattern.removesuffix("$"))


class ServiceCollector(Collector):
    """Counters the services keep themselves, read at scrape time."""

    def __init__(self, services: Services) -> None:
        self.services = services

    def collect(self) -> Iterator[Metric]:
        cache, redis = self.services.cache, self.services.redis
        yield CounterMetricFamily(
            "todo_cache_hits", "First-page reads answered from Redis.", value=cache.hits
        )
        yield CounterMetricFamily(
            "todo_cache_misses", "First-page reads that found no page in Redis.",
            value=cache.misses,
        )
        yield CounterMetricFamily(
            "todo_redis_errors",
            "Redis calls that failed or timed out (each was served without Redis).",
            value=redis.errors,
        )
        hub = self.services.hub
        yield GaugeMetricFamily(
            "todo_ws_open_sockets", "Notification WebSockets open on this instance.",
            value=hub.sockets,
        )
        yield GaugeMetricFamily(
            "todo_ws_queued_messages",
            "Notification messages waiting in the sockets' bounded queues.", value=hub.queued,
        )
        yield CounterMetricFamily(
            "todo_ws_messages_sent", "Notification messages written to WebSockets.",
            value=hub.sent,
        )
        yield CounterMetricFamily(
            "todo_ws_slow_disconnects",
            "WebSockets closed because their client fell a whole queue behind.",
            value=hub.slow_disconnects,
        )
        yield CounterMetricFamily(
            "todo_ws_redis_reconnects",
            "Times the notification hub lost its Redis pub/sub connection and reconnected.",
            value=hub.reconnects,
        )
        yield CounterMetricFamily(
            "todo_notify_publish_failures",
            "Notifications this instance could not publish (Redis down); the writes succeeded.",
            value=self.services.events.failures,
        )


# conf/edge/edge.lua's pass reasons: not a plain first-page read, Redis failing (or cooling
# down), revocations not synced, an instance's lease missing, no page, a stale page, a link
# needing escapes, an unreadable page, an If-None-Match Tornado must judge.
EDGE_REASONS = ("request", "redis", "unsynced", "lease", "miss", "stale", "escape",
                "unreadable", "etag")


class EdgeCollector(Collector):
    """The nginx edge's counters (conf/edge/edge.lua pushes them to a Redis hash)."""

    def __init__(self, pushed: Mapping[bytes | str, bytes | str]) -> None:
        self.values = {
            name.decode() if isinstance(name, bytes) else name: int(value)
            for name, value in pushed.items()
        }

    def collect(self) -> Iterator[Metric]:
        get = self.values.get
        yield CounterMetricFamily("todo_edge_hits", "First pages nginx answered from Redis.",
                                  value=get("hits", 0))
        passes = CounterMetricFamily(
            "todo_edge_passes", "Requests to /todo the edge passed to the instances, by reason.",
            labels=["reason"])
        for reason in EDGE_REASONS:
            passes.add_metric([reason], get(f"pass:{reason}", 0))
        yield passes
        yield CounterMetricFamily(
            "todo_edge_unauthorized", "401s the edge answered itself (bad, expired, revoked).",
            value=get("unauthorized", 0))
        yield CounterMetricFamily(
            "todo_edge_redis_errors", "Edge Redis calls that failed (each request passed).",
            value=get("redis_errors", 0))


class ReplicaSetCollector(Collector):
    """The MongoDB replica set as one replSetGetStatus saw it at scrape time."""

    def __init__(self, status: ReplicaSetStatus) -> None:
        self.status = status

    def collect(self) -> Iterator[Metric]:
        primary = GaugeMetricFamily(
            "todo_mongodb_member_primary", "1 for the replica set's primary, 0 for the others.",
            labels=["member"])
        healthy = GaugeMetricFamily(
            "todo_mongodb_member_healthy", "1 while the member answers the set's heartbeats.",
            labels=["member"])
        lag = GaugeMetricFamily(
            "todo_mongodb_replication_lag_seconds",
            "How far the member's applied writes are behind the primary's last one (absent "
            "without a primary, or for a member that is down).", labels=["member"])
        for member in self.status.members:
            primary.add_metric([member.name], float(member.name == self.status.primary))
            healthy.add_metric([member.name], float(member.healthy))
            if member.lag_seconds is not None:
                lag.add_metric([member.name], member.lag_seconds)
        yield from (primary, healthy, lag)


class Metrics:
    def __init__(
        self, services: Services, routes: Sequence[tuple[str, type[RequestHandler]]]
    ) -> None:
        self._routes: dict[type[RequestHandler], str] = {}
        for pattern, handler in routes:
            # The handler class names the route a request matched, so it must name only one.
            if self._routes.setdefault(handler, route_label(pattern)) != route_label(pattern):
                raise ValueError(f"{handler.__name__} serves more than one route")
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "todo_http_requests", "Finished HTTP requests.", ["route", "method", "status"],
            registry=self.registry,
        )
        self.duration = Histogram(
            "todo_http_request_duration_seconds",
            "Time from the request's arrival to its last byte written.", ["route", "method"],
            registry=self.registry,
        )
        self.mongo_errors = Counter(
            "todo_mongodb_errors",
            "Requests failed by a MongoDB error: kind=unavailable were answered 503.",
            ["kind"], registry=self.registry,
        )
        for kind in ("unavailable", "other"):
            self.mongo_errors.labels(kind)  # exported as 0 before the first error
        self.registry.register(ServiceCollector(services))

    def route_of(self, handler: RequestHandler) -> str:
        return self._routes.get(type(handler), UNMATCHED)

    def observe(self, handler: RequestHandler, route: str) -> None:
        """Count one finished request and its duration."""
        method = handler.request.method or ""
        method = method if method in METHODS else "other"
        self.requests.labels(route, method, str(handler.get_status())).inc()
        self.duration.labels(route, method).observe(handler.request.request_time())

    def mongo_error(self, *, unavailable: bool) -> None:
        self.mongo_errors.labels("unavailable" if unavailable else "other").inc()

    def exposition(self, edge: Mapping[bytes | str, bytes | str] | None = None,
                   replicas: ReplicaSetStatus | None = None) -> bytes:
        """Every metric in the Prometheus text format; the edge's when `edge` (its hash) is
        given (absent when Redis did not answer, or when no edge ever pushed any), and the
        replica set's when MongoDB is one."""
        text = generate_latest(self.registry)
        scraped: list[Collector] = []
        if edge:
            scraped.append(EdgeCollector(edge))
        if replicas:
            scraped.append(ReplicaSetCollector(replicas))
        if scraped:
            registry = CollectorRegistry()
            for collector in scraped:
                registry.register(collector)
            text += generate_latest(registry)
        return text
