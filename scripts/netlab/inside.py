"""What the lab command asks of MongoDB and Redis, run as a process inside a lab namespace
(`ip netns exec <lab>-client python -m scripts.netlab.inside ...`): PyMongo opens sockets on
threads of its own, so the whole process must be in the lab, never the caller's thread alone.
Each task prints one JSON object. It refuses to run outside a lab namespace.

    initiate LAB_JSON     initiate the replica set (once) and wait for a primary
    indexes LAB_JSON      create the indexes once MongoDB has a primary
    health LAB_JSON       every server and instance of the lab, and how it answers
    members LAB_JSON      each replica-set member's state, quickly
    queue LAB_JSON        the job queue's master as each Sentinel names it, each node's role
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from pymongo import MongoClient
from pymongo.errors import PyMongoError
from redis import Redis
from redis.exceptions import RedisError

from scripts.netlab.netns import NETNS_DIR, http_get
from scripts.netlab.topology import HTTP_PORT, REPLICA_SET, Lab
from scripts.stack import replica_set
from scripts.stack.commands import create_indexes_when_ready
from scripts.stack.config import StackConfig, StackError
from scripts.stack.sentinel import MASTER_NAME, host_port


def own_netns() -> str | None:
    """The named namespace this process is in, if any."""
    mine = os.stat("/proc/self/ns/net").st_ino
    for path in NETNS_DIR.glob("*"):
        if path.stat().st_ino == mine:
            return path.name
    return None


def _direct(member: str, timeout_ms: int = 2000) -> MongoClient[dict[str, Any]]:
    return MongoClient(f"mongodb://{member}/?directConnection=true",
                       serverSelectionTimeoutMS=timeout_ms, connectTimeoutMS=timeout_ms,
                       socketTimeoutMS=timeout_ms * 2)


def initiate(lab: Lab, timeout: float) -> dict[str, Any]:
    """The set's configuration (scripts/stack/replica_set.py), given once; its primary."""
    members = lab.mongo_members()
    try:
        initiated = replica_set.initiate(members, REPLICA_SET, timeout)
    except replica_set.ReplicaSetError as exc:
        raise StackError(str(exc)) from None
    return {"primary": initiated.primary, "initiated now": initiated.by_this_call}


def members(lab: Lab, timeout_ms: int = 1000) -> dict[str, str]:
    """Each replica-set member -> its state and set, as it says itself."""
    report: dict[str, str] = {}
    for member in lab.mongo_members():
        try:
            with _direct(member, timeout_ms) as client:
                hello = client.admin.command("hello")
            state = ("PRIMARY" if hello.get("isWritablePrimary") else
                     "SECONDARY" if hello.get("secondary") else "other")
            report[f"mongod {member}"] = f"{state} of {hello.get('setName', '-')}"
        except PyMongoError as exc:
            report[f"mongod {member}"] = f"DOWN: {type(exc).__name__}"
    return report


def _redis(address: str, timeout: float) -> Redis:
    host, port = host_port(address)
    return Redis(host, port, socket_timeout=timeout, socket_connect_timeout=timeout,
                 decode_responses=True)


def queue(lab: Lab, timeout: float = 1.0) -> dict[str, str]:
    """The job queue: the master the Sentinels name (and how many agree), what each Sentinel
    says, and each node's role as it says itself."""
    sentinels: dict[str, str] = {}
    named: list[str] = []
    for address in lab.sentinels():
        try:
            with _redis(address, timeout) as sentinel:
                state = sentinel.sentinel_master(MASTER_NAME)
        except (RedisError, OSError) as exc:
            sentinels[f"sentinel {address}"] = f"DOWN: {exc}"
            continue
        named.append(f"{state['ip']}:{state['port']}")
        sentinels[f"sentinel {address}"] = (
            f"master {named[-1]}, {state['num-other-sentinels']} other Sentinels, "
            f"{state['num-slaves']} replica(s)"
            + (", failing over" if "failover_in_progress" in state["flags"] else ""))
    master = max(set(named), key=named.count) if named else "none"
    report = {"queue master": f"{master} (named by {named.count(master)} of "
                              f"{len(lab.sentinels())} Sentinels)", **sentinels}
    for address in lab.queue_nodes():
        try:
            with _redis(address, timeout) as node:
                role = node.role()
        except (RedisError, OSError) as exc:
            report[f"queue node {address}"] = f"DOWN: {exc}"
            continue
        report[f"queue node {address}"] = (
            "master" if role[0] == "master" else f"replica of {role[1]}:{role[2]} ({role[3]})")
    return report


def health(lab: Lab) -> dict[str, str]:
    """Each part of the lab -> how it answers, from this namespace."""
    report = members(lab)
    try:
        with Redis.from_url(lab.cache_url(), socket_timeout=1, socket_connect_timeout=1) as cache:
            report[f"cache redis {lab.cache_url()}"] = "PONG" if cache.ping() else "no PONG"
    except RedisError as exc:
        report[f"cache redis {lab.cache_url()}"] = f"DOWN: {exc}"
    report.update(queue(lab))
    netns = own_netns() or ""
    edge = lab.host("edge").address
    checks = [(f"instance {name}", *name.rsplit(":", 1)) for name in lab.instances()]
    checks.append((f"nginx {edge}:{HTTP_PORT}", edge, str(HTTP_PORT)))
    for label, address, port in checks:
        try:
            status, body = http_get(netns, address, int(port), "/readyz", timeout=2.0)
            report[f"{label} /readyz"] = f"{status} {body.decode(errors='replace').strip()}"
        except OSError as exc:
            report[f"{label} /readyz"] = f"DOWN: {exc}"
    return report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="scripts.netlab.inside", description=__doc__)
    parser.add_argument("task", choices=["initiate", "indexes", "health", "members", "queue"])
    parser.add_argument("lab_json", type=Path)
    parser.add_argument("--timeout", type=float, default=60.0)
    args = parser.parse_args(argv)
    if own_netns() is None:
        sys.exit("scripts.netlab.inside: runs only inside a lab namespace (ip netns exec)")
    lab = Lab(**json.loads(args.lab_json.read_text()))
    try:
        if args.task == "initiate":
            result: dict[str, Any] = initiate(lab, args.timeout)
        elif args.task == "indexes":
            create_indexes_when_ready(
                StackConfig(external_mongo_uri=lab.mongo_uri(), db_name=lab.db_name),
                args.timeout)
            result = {"indexes": "created"}
        elif args.task == "members":
            result = dict(members(lab, timeout_ms=500))
        elif args.task == "queue":
            result = dict(queue(lab, timeout=0.5))
        else:
            result = dict(health(lab))
    except StackError as exc:
        sys.exit(f"scripts.netlab.inside: {exc}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
