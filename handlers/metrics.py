"""This instance's Prometheus metrics, for a scraper on loopback (nginx does not expose them)."""

from __future__ import annotations

import asyncio

from prometheus_client import CONTENT_TYPE_LATEST

from server.infra.replica_status import replica_set_status

from .base import APIHandler


class MetricsHandler(APIHandler):
    requires_auth = False
    sheddable = False

    async def get(self) -> None:
        """Request counts and latencies, cache and dependency errors, MongoDB's primary and
        replication lag, in Prometheus text."""
        # The nginx edge's counters, shared by all instances: one HGETALL, none without Redis.
        key = self.services.redis.key("edge-metrics")
        edge, replicas = await asyncio.gather(
            self.services.redis.run(lambda r: r.hgetall(key), default=None),
            replica_set_status(self.services.mongo),
        )
        self.set_header("Content-Type", CONTENT_TYPE_LATEST)
        self.write(self.metrics.exposition(edge, replicas))


default_handlers = [
    (r"/metrics", MetricsHandler),
]
