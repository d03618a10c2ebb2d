"""A MongoDB replica set: the members' configuration, its initiation, and the wait for a
primary. `todo-stack up --replica-set 3` runs its members under supervisord on loopback ports;
the lab (scripts/lab) runs them on its database hosts.

Why these settings (docs/operations.md#replica-set):
- electionTimeoutMillis 2000, not MongoDB's 10000: measured here, a new primary takes majority
  writes about 3 s after a `kill -9` of the old one instead of about 11 s. Heartbeats stay at
  every 2 s, so a busy but healthy primary is not voted out over one slow beat.
- Equal priorities: when a member comes back it does not take the primary's role over again,
  which would be a second election (and a second pause in writes) for no gain: every member
  holds the same data on the same kind of host.
"""

from __future__ import annotations

import time
from typing import Any, NamedTuple

from pymongo import MongoClient
from pymongo.errors import OperationFailure, PyMongoError

DEFAULT_NAME = "todo"
ELECTION_TIMEOUT_MS = 2000
# replSetGetStatus's codes: the member has no configuration yet; it already has one.
NOT_YET_INITIALIZED = 94
ALREADY_INITIALIZED = 23


class ReplicaSetError(Exception):
    """The set could not be initiated or elected no primary in time; one line for the operator."""


def replica_set_uri(hosts: list[str], name: str = DEFAULT_NAME) -> str:
    """The URI clients use: every member as a seed, so any one of them may be down."""
    return f"mongodb://{','.join(hosts)}/?replicaSet={name}"


def replica_set_config(hosts: list[str], name: str = DEFAULT_NAME) -> dict[str, Any]:
    return {
        "_id": name,
        "members": [{"_id": number, "host": host, "priority": 1}
                    for number, host in enumerate(hosts)],
        "settings": {"electionTimeoutMillis": ELECTION_TIMEOUT_MS},
    }


def _direct(host: str) -> MongoClient[dict[str, Any]]:
    return MongoClient(f"mongodb://{host}/?directConnection=true",
                       serverSelectionTimeoutMS=1000, connectTimeoutMS=1000)


class Initiated(NamedTuple):
    by_this_call: bool  # False: the members had their configuration already
    primary: str  # host:port of the member that takes writes


def initiate(hosts: list[str], name: str = DEFAULT_NAME, timeout: float = 60.0) -> Initiated:
    """Give the members their configuration (through the first) once every one answers,
    unless they have one already, and wait until one of them is primary."""
    deadline = time.monotonic() + timeout
    for host in hosts:  # replSetInitiate refuses while any member is unreachable
        _wait_for_answer(host, deadline)
    initiated = False
    with _direct(hosts[0]) as first:
        try:
            first.admin.command("replSetGetStatus")
        except OperationFailure as exc:
            if exc.code != NOT_YET_INITIALIZED:
                raise ReplicaSetError(f"{hosts[0]}: {exc.details}") from None
            try:
                first.admin.command("replSetInitiate", replica_set_config(hosts, name))
                initiated = True
            except OperationFailure as again:
                if again.code != ALREADY_INITIALIZED:
                    raise ReplicaSetError(f"replSetInitiate: {again.details}") from None
    primary = wait_for_primary(hosts, name, max(deadline - time.monotonic(), 1.0))
    return Initiated(initiated, primary)


def _wait_for_answer(host: str, deadline: float) -> None:
    with _direct(host) as member:
        while True:
            try:
                member.admin.command("ping")
                return
            except PyMongoError as exc:
                if time.monotonic() > deadline:
                    raise ReplicaSetError(f"mongod at {host} never answered: {exc}") from None
                time.sleep(0.2)


def wait_for_primary(hosts: list[str], name: str = DEFAULT_NAME, timeout: float = 60.0) -> str:
    """The primary's host:port, once there is one that takes writes."""
    deadline = time.monotonic() + timeout
    client: MongoClient[dict[str, Any]] = MongoClient(replica_set_uri(hosts, name),
                                                      serverSelectionTimeoutMS=1000)
    with client:
        while True:
            try:
                hello = client.admin.command("hello")
                if hello.get("isWritablePrimary"):
                    return str(hello["me"])
            except PyMongoError as exc:
                last = str(exc)
            else:
                last = "no primary yet"
            if time.monotonic() > deadline:
                raise ReplicaSetError(f"replica set {name} elected no primary within "
                                      f"{timeout:.0f}s ({last})")
            time.sleep(0.2)
