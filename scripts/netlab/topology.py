"""What the lab is: its hosts (network namespaces), their addresses on the lab's own subnet,
which of the stack's programs each runs, and each host's StackConfig, rendered by the same
code (scripts/stack/config.py) as the one-machine stack.

Nothing here touches the system; netns.py builds the network and commands.py starts hosts.
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from scripts.stack.config import DEFAULT_VAR, StackConfig, StackError, missing_edge_module
from scripts.stack.sentinel import host_port, sentinel_url

DEFAULT_NAME = "lab"
# Checked unused before `up` (no address and no route of the root namespace overlaps it).
DEFAULT_SUBNET = "10.211.0.0/24"
# The set's settings are todo-stack's own (scripts/stack/replica_set.py); only its name differs.
REPLICA_SET = "lab"
HTTP_PORT, HTTPS_PORT = 80, 443
INSTANCE_PORT = 8001
MONGO_PORT = 27017
REDIS_PORT = 6379
SENTINEL_PORT = 26379
# A host cut off the network never answers on the connections nginx keeps open to it: a read
# waits this long there, then goes to the next instance (within proxy_next_upstream_timeout,
# 10 s). Above the instances' own 1 s wait for MongoDB and their usual answer by far.
EDGE_READ_TIMEOUT = 5

# host -> (last byte of its address, the stack programs it runs; see PROGRAM_ROLES)
HOSTS: dict[str, tuple[int, tuple[str, ...]]] = {
    "edge": (10, ("nginx",)),
    "app1": (21, ("instances", "celery")),
    "app2": (22, ("instances", "celery")),
    "db1": (31, ("mongod",)),
    "db2": (32, ("mongod",)),
    "db3": (33, ("mongod",)),
    # The cache's Redis, and the queue's third Sentinel.
    "cache": (41, ("redis", "sentinels")),
    # The job queue's Redis: the first master on queue1, its replica on queue2, a Sentinel
    # beside each. With the cache's, any host cut off leaves two Sentinels, a majority, on
    # the other side (docs/lab.md).
    "queue1": (51, ("broker", "sentinels")),
    "queue2": (52, ("broker", "sentinels")),
    # Runs nothing: the lab's clients (tests, curl, wrk) run here.
    "client": (100, ()),
}
# Started last, stopped first: the edge needs the instances, they need the data hosts.
START_ORDER = ("db1", "db2", "db3", "cache", "queue1", "queue2", "app1", "app2", "edge")
QUEUE_NODES = ("queue1", "queue2")  # the first master first
# The order the instances and workers ask them in: the one beside no queue node first, so that
# losing a queue node's host (what the Sentinels are for) costs no discovery of the master a
# timeout on its Sentinel.
SENTINEL_HOSTS = ("cache", "queue1", "queue2")


@dataclass(frozen=True)
class Host:
    name: str
    address: str
    programs: tuple[str, ...]
    netns: str
    # Its end of the veth pair inside the switch namespace (the host's own end is eth0), named
    # after the lab so that the root namespace can be checked never to hold one.
    switch_port: str


@dataclass
class Lab:
    """One lab: its name prefixes every namespace (`<name>-edge`, `<name>-switch`, ...)."""

    name: str = DEFAULT_NAME
    subnet: str = DEFAULT_SUBNET
    var: str = str(DEFAULT_VAR / "lab")
    instances_per_host: int = 1
    db_name: str = "todo"
    # Filled by `up` as it goes, so that `down` removes exactly what was created.
    created_netns: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        network = ipaddress.ip_network(self.subnet)
        if network.version != 4 or not network.is_private or network.prefixlen > 24:
            raise StackError(f"the lab's subnet must be a private IPv4 /24 or larger: {network}")
        if not self.name.isalnum() or len(self.name) > 8:
            raise StackError(f"a lab's name is up to 8 letters or digits: {self.name!r}")

    @property
    def network(self) -> ipaddress.IPv4Network:
        return ipaddress.IPv4Network(self.subnet)

    @property
    def switch(self) -> str:
        return f"{self.name}-switch"

    @property
    def bridge(self) -> str:
        return f"{self.name}-br"

    @property
    def hosts(self) -> dict[str, Host]:
        base = self.network.network_address
        return {
            name: Host(name, str(base + last), programs, f"{self.name}-{name}",
                       f"{self.name}-{name}")
            for name, (last, programs) in HOSTS.items()
        }

    def host(self, name: str) -> Host:
        return self.hosts[name]

    @property
    def netns(self) -> list[str]:
        """Every namespace of the lab, the switch first."""
        return [self.switch, *(host.netns for host in self.hosts.values())]

    def path(self, *parts: str) -> Path:
        return Path(self.var).joinpath(*parts)

    # -- the addresses the hosts give one another -----------------------------------------
    def mongo_members(self) -> list[str]:
        return [f"{self.host(name).address}:{MONGO_PORT}" for name in ("db1", "db2", "db3")]

    def mongo_uri(self) -> str:
        return f"mongodb://{','.join(self.mongo_members())}/?replicaSet={REPLICA_SET}"

    def cache_url(self) -> str:
        return f"redis://{self.host('cache').address}:{REDIS_PORT}/0"

    def queue_nodes(self) -> list[str]:
        return [f"{self.host(name).address}:{REDIS_PORT}" for name in QUEUE_NODES]

    def sentinels(self) -> list[str]:
        return [f"{self.host(name).address}:{SENTINEL_PORT}" for name in SENTINEL_HOSTS]

    def queue_url(self) -> str:
        """The queue's Sentinels, Celery's sentinel:// form: the instances and workers ask
        them for the master (named `todo-queue`, the settings' broker_master_name)."""
        return sentinel_url([host_port(name) for name in self.sentinels()], 0)

    def instances(self) -> list[str]:
        """Every instance, as nginx and the edge's leases name it ("address:port")."""
        return [f"{self.host(name).address}:{INSTANCE_PORT + i}"
                for name in ("app1", "app2") for i in range(self.instances_per_host)]

    @property
    def edge_url(self) -> str:
        port = "" if HTTP_PORT == 80 else f":{HTTP_PORT}"
        return f"http://{self.host('edge').address}{port}"

    # -- each host's stack -----------------------------------------------------------------
    def stack_config(self, name: str) -> StackConfig:
        """What the host's supervisord runs, rendered by scripts/stack/config.py."""
        host = self.host(name)
        values: dict[str, object] = {
            "var": str(self.path(name)), "address": host.address, "programs": host.programs,
            "db_name": self.db_name, "instances": self.instances_per_host,
            "base_port": INSTANCE_PORT, "mongo_port": MONGO_PORT, "redis_port": REDIS_PORT,
            "broker_port": REDIS_PORT, "sentinel_port": SENTINEL_PORT,
            # The edge's Lua reads the cache; nothing else here listens on loopback.
            "listen": host.address, "http_port": HTTP_PORT, "https_port": HTTPS_PORT,
            "rate_limit_exempt": ("127.0.0.1", self.host("client").address),
        }
        if name.startswith("app") or name == "edge":
            values.update(external_mongo_uri=self.mongo_uri(), external_redis_url=self.cache_url(),
                          external_broker_url=self.queue_url())
        if "sentinels" in host.programs:
            values.update(queue_sentinels=len(SENTINEL_HOSTS),
                          queue_nodes=tuple(self.queue_nodes()), sentinels=tuple(self.sentinels()))
        if name.startswith("db"):
            values["mongo_replica_set"] = REPLICA_SET
        if name == "edge":
            values.update(upstreams=tuple(self.instances()),
                          upstream_read_timeout=EDGE_READ_TIMEOUT,
                          edge=missing_edge_module() is None,
                          webapp_dir=str(self.path(name, "webapp")))
        return StackConfig(**values)  # type: ignore[arg-type]

    # -- saved state -----------------------------------------------------------------------
    def save(self) -> None:
        self.path().mkdir(parents=True, exist_ok=True)
        self.path("lab.json").write_text(json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, var: Path) -> Lab | None:
        try:
            return cls(**json.loads((var / "lab.json").read_text()))
        except FileNotFoundError:
            return None
