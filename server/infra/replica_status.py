"""Which MongoDB member is primary and how far each secondary lags, for /readyz and /metrics.

One `replSetGetStatus` on whichever member answers: the members' own view, not the driver's
estimate from heartbeats. A standalone mongod has no replica set, and then there is nothing to
report.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pymongo import AsyncMongoClient, ReadPreference
from pymongo.errors import PyMongoError


@dataclass(frozen=True)
class Member:
    name: str  # host:port, as the set's configuration names it
    state: str  # PRIMARY, SECONDARY, RECOVERING, (not reachable/healthy), ...
    healthy: bool
    # Seconds of writes the member has not applied yet, measured against the primary's last
    # one; None while there is no primary to measure against.
    lag_seconds: float | None


@dataclass(frozen=True)
class ReplicaSetStatus:
    name: str
    primary: str | None
    members: tuple[Member, ...]

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "primary": self.primary,
            "members": [{"name": m.name, "state": m.state, "healthy": m.healthy,
                         "lag_seconds": m.lag_seconds} for m in self.members],
        }


def parse_status(reply: dict[str, Any]) -> ReplicaSetStatus:
    members = reply.get("members", [])
    primary = next((m for m in members if m.get("stateStr") == "PRIMARY"), None)
    applied_by_primary = primary.get("optimeDate") if primary else None

    def lag(member: dict[str, Any]) -> float | None:
        applied = member.get("optimeDate")
        if applied_by_primary is None or applied is None or not member.get("health"):
            return None
        behind: float = (applied_by_primary - applied).total_seconds()
        return max(behind, 0.0)

    return ReplicaSetStatus(
        name=str(reply.get("set", "")),
        primary=str(primary["name"]) if primary else None,
        members=tuple(Member(name=str(m["name"]), state=str(m.get("stateStr", "UNKNOWN")),
                             healthy=bool(m.get("health")), lag_seconds=lag(m))
                      for m in members),
    )


async def replica_set_status(client: AsyncMongoClient[Any]) -> ReplicaSetStatus | None:
    """The set's status, or None on a standalone server or when no member answers."""
    try:
        # Any member answers: during an election there is no primary, and that is news too.
        reply = await client.admin.command(
            "replSetGetStatus", read_preference=ReadPreference.PRIMARY_PREFERRED
        )
    except PyMongoError:  # standalone (NoReplicationEnabled), no rights, or no member answers
        return None
    return parse_status(reply)
