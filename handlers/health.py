"""Liveness, readiness and the API description."""

from __future__ import annotations

import asyncio

from server.infra.replica_status import replica_set_status

from .base import APIHandler


class HealthHandler(APIHandler):
    requires_auth = False
    sheddable = False

    def get(self) -> None:
        """The process is alive and its event loop answers."""
        self.write({"status": "ok"})


class ReadinessHandler(APIHandler):
    requires_auth = False
    sheddable = False

    async def get(self) -> None:
        """MongoDB and Redis both answer; otherwise 503 naming the one that does not. On a
        replica set, also which member is primary and how far each one lags."""
        mongo_ok, redis_ok, replicas = await asyncio.gather(
            self.services.mongo_ready(), self.services.redis_ready(),
            replica_set_status(self.services.mongo),
        )
        checks = {"mongodb": "ok" if mongo_ok else "unavailable",
                  "redis": "ok" if redis_ok else "unavailable"}
        details = {"mongodb_replica_set": replicas.as_json()} if replicas else {}
        if mongo_ok and redis_ok:
            self.write({"status": "ready", "checks": checks, **details})
            return
        failed = [name for name, state in checks.items() if state != "ok"]
        self.set_status(503)
        self.write({
            "error": {"status": 503, "message": f"not ready: {', '.join(failed)} unavailable"},
            "checks": checks, **details,
        })


class OpenAPIHandler(APIHandler):
    requires_auth = False
    sheddable = False

    def get(self) -> None:
        """This API described in OpenAPI 3.1."""
        self.set_header("Content-Type", "application/json; charset=UTF-8")
        self.write(self.settings["openapi_spec"])


default_handlers = [
    (r"/healthz", HealthHandler),
    (r"/readyz", ReadinessHandler),
    (r"/openapi.json", OpenAPIHandler),
]
