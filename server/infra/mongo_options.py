"""The MongoDB client options every process of the service shares (the instances' async client,
the workers' synchronous one): how long to wait, how often to check the servers, how durable
an acknowledged write is."""

from __future__ import annotations

from typing import Any

from server.infra.settings import Settings

# How often the driver checks each MongoDB server (10 s by default). A primary cut off the
# network answers nothing, and it is the missed check that sends writes to the new primary:
# measured in the lab, 7 to 14 s of failed writes after a cut at 10 s, 4.1 s at 1 s. One hello
# a second per server costs nothing.
HEARTBEAT_MS = 1000


def mongo_options(settings: Settings, appname: str) -> dict[str, Any]:
    """Options that give up quickly on an unreachable server (a 503, never a hang) and make an
    acknowledged write one journaled on a majority (it survives a mongod crash)."""
    return {
        "serverSelectionTimeoutMS": settings.mongo_timeout_ms,
        "connectTimeoutMS": settings.mongo_timeout_ms,
        # Not timeoutMS: pymongo then bounds server selection by it too (an unreachable
        # server would take that long to become a 503), and counts the wait for a pooled
        # connection, which under a burst is queueing, not failure. The socket timeout bounds
        # an operation a live server does not answer.
        "socketTimeoutMS": settings.mongo_op_timeout_ms,
        "heartbeatFrequencyMS": HEARTBEAT_MS,
        "w": "majority",
        "journal": True,
        "tz_aware": True,
        "appname": appname,
    }
