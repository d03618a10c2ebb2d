"""Redis Sentinel for the job queue: the Sentinels' config, their addresses as Celery's
sentinel:// URL, and the start of a queue node that asks them which role to take.

`todo-stack up --queue-sentinels 3` runs the queue's master, one replica and three Sentinels
under supervisord; scripts/lab runs them on hosts of their own (each binds its host's address);
tests/worker/test_sentinel.py runs the same pieces by hand and kills the master. Why these
settings (docs/operations.md, "The queue with Sentinels"):

- down-after-milliseconds 1000: a master that does not answer for 1 s is down; measured here,
  a replica is promoted and named by the Sentinels about 2.3 s after a `kill -9`.
- failover-timeout 5000: a failover that stalls is tried again after 10 s (twice this), and a
  new master may be failed over again 10 s after the last failover rather than Redis's 6 min.
- Quorum: a majority of the Sentinels (2 of 3) must see the master down; the failover itself
  always needs a majority to elect its leader, so a lone Sentinel cut off from the others
  never promotes anything.

A queue node restarted by supervisor (`node` below) first asks the Sentinels who the master
is and starts as its replica when that is another node: a master that crashed while the
Sentinels promoted its replica comes back as a replica, never as a second master. When it is
still the master the Sentinels name (it came back before they gave up on it, within 1 s), it
starts as the master again with its append-only file, and nothing is lost.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any

import redis
from redis.exceptions import RedisError

# The settings' default broker_master_name. Not imported from server.infra.settings: a queue
# node restarted by supervisor runs this module first, and every 0.1 s it spends starting is
# time the Sentinels count against its 1 s (tests/stack/test_queue_sentinels.py compares them).
MASTER_NAME = "todo-queue"
DOWN_AFTER_MS = 1000
FAILOVER_TIMEOUT_MS = 5000
# How long a node starting waits for a Sentinel to answer (they start beside it), and for a
# failover in progress to name its new master, before it takes the role it was given.
SENTINEL_WAIT_SECONDS = 10.0
ASK_TIMEOUT_SECONDS = 0.5
# redis-server's options on every queue node, master or replica (either may be promoted):
# a queued job is on disk before it is acknowledged, a full queue refuses jobs rather than
# evicting them, and a replica that connects gets the data at once (Redis 7 waits 5 s for
# more replicas to share a diskless transfer: a master lost then would leave an empty one).
QUEUE_NODE_OPTIONS = ("--appendonly", "yes", "--appendfsync", "always",
                      "--maxmemory-policy", "noeviction", "--repl-diskless-sync-delay", "0")


def quorum(sentinels: int) -> int:
    """How many Sentinels must agree that the master is down: a majority."""
    return sentinels // 2 + 1


def sentinel_conf(*, port: int, directory: Path, master_port: int, sentinels: int,
                  host: str = "127.0.0.1", master_host: str | None = None,
                  master_name: str = MASTER_NAME) -> str:
    """A Sentinel's config file: it binds `host` and watches the master at `master_host`
    (`host` unless given: on one machine both are loopback). Sentinel rewrites it (the current
    master, the replicas and the other Sentinels it learned of), so it lives in a directory
    of its own under var/."""
    return (
        f"# Written by todo-stack (scripts/stack/sentinel.py); Sentinel rewrites it.\n"
        f"port {port}\nbind {host}\ndir {directory}\ndaemonize no\nlogfile \"\"\n"
        f"sentinel resolve-hostnames no\n"
        f"sentinel monitor {master_name} {master_host or host} {master_port} "
        f"{quorum(sentinels)}\n"
        f"sentinel down-after-milliseconds {master_name} {DOWN_AFTER_MS}\n"
        f"sentinel failover-timeout {master_name} {FAILOVER_TIMEOUT_MS}\n"
        f"sentinel parallel-syncs {master_name} 1\n"
    )


def sentinel_url(sentinels: list[tuple[str, int]], db: int) -> str:
    """Celery's form: every Sentinel ("host", port), separated by `;`, the database on each
    (kombu and Celery read it from the first)."""
    return ";".join(f"sentinel://{host}:{port}/{db}" for host, port in sentinels)


def master_state(sentinel: tuple[str, int], master_name: str = MASTER_NAME,
                 ) -> dict[str, Any] | None:
    """What one Sentinel says of the master (SENTINEL MASTER), or None if it does not answer."""
    host, port = sentinel
    try:
        with redis.Redis(host, port, socket_timeout=ASK_TIMEOUT_SECONDS,
                         socket_connect_timeout=ASK_TIMEOUT_SECONDS,
                         decode_responses=True) as client:
            state: dict[str, Any] = client.sentinel_master(master_name)
    except (RedisError, OSError):
        return None
    return state


def ask_master(sentinels: list[tuple[str, int]], master_name: str = MASTER_NAME,
               ) -> tuple[tuple[str, int] | None, bool]:
    """The master the first Sentinel to answer names, and whether any Sentinel is in the midst
    of a failover (its answer may be about to change). (None, False): no Sentinel answered."""
    master: tuple[str, int] | None = None
    failing_over = False
    for address in sentinels:
        state = master_state(address, master_name)
        if state is None:
            continue
        master = master or (state["ip"], int(state["port"]))
        failing_over = failing_over or "failover_in_progress" in state["flags"]
    return master, failing_over


def ready_to_fail_over(sentinels: list[tuple[str, int]], replicas: int,
                       master_name: str = MASTER_NAME) -> bool:
    """Whether every Sentinel knows the master, the other Sentinels and `replicas` replicas.

    Sentinels learn of a replica from the master's INFO, every 10 s: a master lost before then
    finds them with no replica to promote (`-failover-abort-no-good-slave`)."""
    for address in sentinels:
        state = master_state(address, master_name)
        if state is None:
            return False
        if (int(state["num-slaves"]) < replicas
                or int(state["num-other-sentinels"]) < len(sentinels) - 1):
            return False
    return True


def wait_ready_to_fail_over(sentinels: list[tuple[str, int]], replicas: int,
                            timeout: float) -> bool:
    """ready_to_fail_over, asked every 0.2 s for at most `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not ready_to_fail_over(sentinels, replicas):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def role_arguments(me: tuple[str, int], sentinels: list[tuple[str, int]], *,
                   replica_of: tuple[str, int] | None, master_name: str = MASTER_NAME,
                   wait: float = SENTINEL_WAIT_SECONDS) -> list[str]:
    """redis-server's arguments for the role a queue node starts in: a replica of the master
    the Sentinels name when that is another node, the master when it is this one. While a
    failover is in progress it waits for the new master's name; when no Sentinel answers
    within `wait`, it takes the role it was configured with (`replica_of`, or master)."""
    deadline = time.monotonic() + wait
    while True:
        master, failing_over = ask_master(sentinels, master_name)
        if master is not None and not failing_over:
            break
        if time.monotonic() > deadline:
            master = master or replica_of
            break
        time.sleep(0.2)
    if master is None or master == me:
        return []
    return ["--replicaof", master[0], str(master[1])]


def host_port(text: str) -> tuple[str, int]:
    """("host", port) of "host:port"."""
    host, _, port = text.rpartition(":")
    return host, int(port)


def main(argv: list[str] | None = None) -> None:
    """`python -m scripts.stack.sentinel --me H:P --sentinels H:P,H:P [--replica-of H:P]
    -- redis-server ARGS`: execs redis-server in the role the Sentinels give this node (so
    supervisor's pid is redis-server's)."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--me", type=host_port, required=True, help="this node's address")
    parser.add_argument("--sentinels", required=True, help="comma-separated H:P")
    parser.add_argument("--replica-of", type=host_port, default=None,
                        help="the master to follow when no Sentinel answers")
    parser.add_argument("--master-name", default=MASTER_NAME)
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("the redis-server command line is missing")
    sentinels = [host_port(text) for text in args.sentinels.split(",")]
    role = role_arguments(args.me, sentinels, replica_of=args.replica_of,
                          master_name=args.master_name)
    print(f"queue node {args.me[0]}:{args.me[1]}: "
          f"{'replica of ' + ' '.join(role[1:]) if role else 'master'}", flush=True)
    os.execv(command[0], [*command, *role])  # noqa: S606 - supervisor's program is redis-server


if __name__ == "__main__":
    main()
