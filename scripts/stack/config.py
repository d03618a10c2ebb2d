"""The stack's configuration: what `todo-stack up` was asked for (StackConfig, saved in
var/stack.json), and the nginx and supervisord configs rendered from the templates in conf/.
"""

from __future__ import annotations

import json
import os
import re
import resource
import shutil
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from redis.connection import parse_url as parse_redis_url

from scripts.local_services import find_mongod, find_redis_server
from scripts.stack import sentinel
from scripts.stack.replica_set import DEFAULT_NAME as REPLICA_SET_NAME
from scripts.stack.replica_set import replica_set_uri
from server.domain.import_form import body_limit as upload_body_limit
from server.infra.addresses import is_sentinel_url, sentinel_addresses
from server.infra.queue import load_celery_config
from server.infra.settings import PROJECT_ROOT, Settings

CONF_DIR = PROJECT_ROOT / "conf"
DEFAULT_VAR = PROJECT_ROOT / "var"
DRAIN_SECONDS = 10
# The instances run with the default prefix; the edge reads the same keys.
REDIS_PREFIX = Settings.redis_prefix
WORKER_CONCURRENCY = 2


class StackError(Exception):
    """The stack cannot do what was asked; the message is one line for the operator."""


@dataclass
class StackConfig:
    """What `up` was asked for; saved so that `down`, `status` and `restart` know it."""

    var: str = str(DEFAULT_VAR)
    instances: int = field(default_factory=lambda: os.cpu_count() or 1)
    base_port: int = 8001
    http_port: int = 8000
    https_port: int = 8443
    listen: str = "127.0.0.1"
    mongo_port: int = 27017
    # 0: one standalone mongod. N: an N-member replica set on mongo_port, mongo_port + 1, ...
    replica_set: int = 0
    redis_port: int = 6379
    broker_port: int = 6380
    # 0: the queue is one Redis. N (3): a master on broker_port, its replica on broker_port + 1
    # and N Sentinels on sentinel_port, sentinel_port + 1, ... (scripts/stack/sentinel.py).
    queue_sentinels: int = 0
    sentinel_port: int = 26379
    # The queue's nodes and Sentinels when they run on several hosts (scripts/lab), each
    # "address:port", the first node the first master; each host runs those on its address.
    # Empty: the defaults above, all on this host's address.
    queue_nodes: tuple[str, ...] = ()
    sentinels: tuple[str, ...] = ()
    # The name the Sentinels (ours, or those of TODO_BROKER_URL) know the queue's master by.
    broker_master_name: str = Settings.broker_master_name
    external_mongo_uri: str = ""
    external_redis_url: str = ""
    external_broker_url: str = ""
    db_name: str = "todo"
    rate_limit: int = 50
    rate_limit_burst: int = 100
    rate_limit_exempt: tuple[str, ...] = ("127.0.0.1",)
    max_body_size: int = 64 * 1024
    # An import's file (the instances' max_upload_size default); nginx lets only /jobs have it.
    max_upload_size: int = 50 * 1024 * 1024
    # nginx answers the cached first page itself (conf/edge/); off: every request to Python.
    edge: bool = True
    # Where `up` publishes the web app for nginx (empty: var/webapp). nginx's workers, which
    # are unprivileged when root starts the stack, must be able to reach it.
    webapp_dir: str = ""
    # One host of several (scripts/lab): the address this host's instances, mongod and Redis
    # bind (and the instances' edge-lease names), the instances nginx sends to when they run
    # on other hosts ("address:port"; empty: this host's own on loopback), which programs this
    # host's supervisord runs (empty: all of them; names in PROGRAM_ROLES), the replica set
    # its mongod is a member of (empty: a standalone mongod), and how long nginx waits for an
    # instance's answer before a read goes to the next instance (a host cut off the network
    # never answers on the connections nginx keeps open to it).
    address: str = "127.0.0.1"
    upstreams: tuple[str, ...] = ()
    programs: tuple[str, ...] = ()
    mongo_replica_set: str = ""
    upstream_read_timeout: int = 30

    @property
    def root(self) -> Path:
        return Path(self.var)

    @property
    def webapp_root(self) -> Path:
        return Path(self.webapp_dir) if self.webapp_dir else self.path("webapp")

    @property
    def ports(self) -> list[int]:
        return [self.base_port + i for i in range(self.instances)]

    def instance_name(self, port: int) -> str:
        """The name an instance renews its edge lease under (its settings' default too)."""
        return f"{self.address}:{port}"

    @property
    def upstream_addresses(self) -> list[tuple[str, int]]:
        """nginx's upstream servers ("address:port") and the port that marks each down."""
        if self.upstreams:
            return [(name, int(name.rsplit(":", 1)[1])) for name in self.upstreams]
        return [(f"127.0.0.1:{port}", port) for port in self.ports]

    def runs(self, program: str) -> bool:
        """Whether this host's supervisord runs `program` (a key of PROGRAM_ROLES)."""
        return not self.programs or program in self.programs

    @property
    def mongo_ports(self) -> list[int]:
        return [self.mongo_port + i for i in range(max(self.replica_set, 1))]

    @property
    def mongo_hosts(self) -> list[str]:
        return [f"127.0.0.1:{port}" for port in self.mongo_ports]

    @property
    def mongo_uri(self) -> str:
        if self.external_mongo_uri:
            return self.external_mongo_uri
        if self.replica_set:
            return replica_set_uri(self.mongo_hosts)
        return f"mongodb://127.0.0.1:{self.mongo_port}"

    @property
    def redis_url(self) -> str:
        return self.external_redis_url or f"redis://127.0.0.1:{self.redis_port}/0"

    @property
    def broker_replica_port(self) -> int:
        return self.broker_port + 1

    @property
    def sentinel_ports(self) -> list[int]:
        return [self.sentinel_port + i for i in range(self.queue_sentinels)]

    @property
    def queue_node_addresses(self) -> list[tuple[str, int]]:
        """The queue's nodes behind Sentinels, the first master first."""
        if self.queue_nodes:
            return [sentinel.host_port(node) for node in self.queue_nodes]
        return [(self.address, self.broker_port), (self.address, self.broker_replica_port)]

    @property
    def sentinel_addresses(self) -> list[tuple[str, int]]:
        """Every Sentinel of the queue, wherever it runs."""
        if self.sentinels:
            return [sentinel.host_port(node) for node in self.sentinels]
        return [(self.address, port) for port in self.sentinel_ports]

    @property
    def broker_url(self) -> str:
        """The job queue. Its own Redis by default: every write on disk before it is
        acknowledged, never an eviction. Given only a Redis of one's own (TODO_REDIS_URL), its
        database 1: never the cache's, which is flushed after an outage. With Sentinels, their
        addresses: the clients ask them for the master."""
        if self.external_broker_url:
            return self.external_broker_url
        if self.queue_sentinels:
            return sentinel.sentinel_url(self.sentinel_addresses, 0)
        if self.external_redis_url:
            return redis_db_url(self.external_redis_url, 1)
        return f"redis://127.0.0.1:{self.broker_port}/0"

    @property
    def result_backend(self) -> str:
        """Celery's results: the database after the queue's, on the same Redis."""
        if is_sentinel_url(self.broker_url):  # every Sentinel's address, the database on each
            queue_db = sentinel_addresses("TODO_BROKER_URL", self.broker_url)[1]
            return ";".join(redis_db_url(part, queue_db + 1)
                            for part in self.broker_url.split(";"))
        queue_db = int(urlsplit(self.broker_url).path.strip("/") or 0)
        return redis_db_url(self.broker_url, queue_db + 1)

    @property
    def base_url(self) -> str:
        return f"http://{self.listen}:{self.http_port}"

    def path(self, *parts: str) -> Path:
        return self.root.joinpath(*parts)

    def save(self) -> None:
        self.path("stack.json").write_text(json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, var: Path) -> StackConfig:
        try:
            values = json.loads((var / "stack.json").read_text())
        except FileNotFoundError:
            raise StackError(f"no stack set up in {var}; run `todo-stack up` first") from None
        values["rate_limit_exempt"] = tuple(values["rate_limit_exempt"])
        for name in ("upstreams", "programs", "queue_nodes", "sentinels"):
            if name in values:
                values[name] = tuple(values[name])
        return cls(**values)


def redis_db_url(url: str, db: int) -> str:
    """`url` naming database `db` instead of its own."""
    return urlunsplit(urlsplit(url)._replace(path=f"/{db}"))


def render(template: str, values: dict[str, object]) -> str:
    """Fill `{{name}}` placeholders of conf/<template>; a missing value is an error."""
    text = (CONF_DIR / template).read_text()

    def value(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in values:
            raise StackError(f"template {template} needs a value for {name!r}")
        return str(values[name])

    return re.sub(r"\{\{(\w+)\}\}", value, text)


def _supervisor_value(text: str) -> str:
    # supervisor expands %(name)s in its config: a literal % must be doubled.
    return text.replace("%", "%%")


def open_files_limit(wanted: int = 65536) -> int:
    """As many open files as wanted, within the hard limit this machine allows."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    return wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)


def find_nginx() -> str:
    found = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else "")
    if not found:
        raise StackError("no nginx: apt-get install -y nginx")
    return found


EDGE_DIR = CONF_DIR / "edge"
# What the edge needs of Debian's packages (scripts/bootstrap installs them).
EDGE_MODULES = ("/usr/lib/nginx/modules/ndk_http_module.so",
                "/usr/lib/nginx/modules/ngx_http_lua_module.so")
EDGE_LUA_FILES = ("/usr/share/lua/5.1/nginx/redis.lua", "/usr/share/lua/5.1/nginx/string.lua",
                  "/usr/share/lua/5.1/nginx/sha256.lua", "/usr/share/lua/5.1/resty/core.lua")


def missing_edge_module() -> str | None:
    """The first file of nginx's Lua modules that is not installed, if any."""
    return next((path for path in (*EDGE_MODULES, *EDGE_LUA_FILES) if not Path(path).exists()),
                None)


def _lua(value: object) -> str:
    """A Lua literal for a string or number (a JSON string is a Lua string for ASCII text)."""
    return json.dumps(value, ensure_ascii=True)


def edge_parts(cfg: StackConfig) -> dict[str, str]:
    """The edge's lines of nginx.conf. Lua is loaded whenever it is installed, and the switch
    only adds or removes the access line: ngx_lua cannot be loaded by a reload (HUP)."""
    missing = missing_edge_module()
    if missing and cfg.edge:
        raise StackError(f"the edge needs nginx's Lua modules ({missing} is missing): run "
                         "scripts/bootstrap, or start without it: todo-stack up --edge off")
    if missing:
        return {"edge_modules": "", "edge_http": "", "edge_access": ""}
    redis = parse_redis_url(cfg.redis_url)  # type: ignore[no-untyped-call]
    host = f"unix:{redis['path']}" if "path" in redis else redis.get("host", "127.0.0.1")
    snippet = render("nginx-edge.conf.in", {
        "edge_dir": EDGE_DIR, "secret_file": _lua(str(cfg.path("secret"))),
        "redis_host": _lua(host), "redis_port": int(redis.get("port", 6379)),
        "redis_db": int(redis.get("db", 0)), "redis_password": _lua(redis.get("password") or ""),
        "redis_prefix": _lua(REDIS_PREFIX),
        "instances": ", ".join(_lua(name) for name, _ in cfg.upstream_addresses),
    })
    access = f"            access_by_lua_file {EDGE_DIR}/access.lua;\n"
    return {
        "edge_modules": "".join(f"load_module {path};\n" for path in EDGE_MODULES),
        "edge_http": snippet.split("\n", 2)[2],
        "edge_access": access if cfg.edge else "",
    }


def proxy_values(cfg: StackConfig, upstreams: int | None = None) -> dict[str, object]:
    """What conf/nginx-proxy.conf.in (and the nginx.conf around it) is filled with, for
    `upstreams` servers behind it (the stack's instances unless given)."""
    count = len(cfg.upstream_addresses) if upstreams is None else upstreams
    return {"rate_limit_burst": cfg.rate_limit_burst,
            "upstream_tries": max(2, min(count, 3)),
            "upstream_read_timeout": cfg.upstream_read_timeout}


def proxy_locations(cfg: StackConfig, upstreams: int | None = None) -> str:
    """The proxy settings every instance location shares (scripts/bench's floor too),
    without the snippet's own two comment lines."""
    return render("nginx-proxy.conf.in", proxy_values(cfg, upstreams)).split("\n", 2)[2]


def nginx_conf(cfg: StackConfig, down: frozenset[int] = frozenset()) -> str:
    """nginx.conf for the instances; those in `down` get no new requests (rolling restart)."""
    servers = "\n".join(
        f"        server {address} max_fails=1 fail_timeout=1s"
        + (" down;" if port in down else ";")
        for address, port in cfg.upstream_addresses
    )
    exempt = "\n".join(f"        {address} 0;" for address in cfg.rate_limit_exempt)
    shared = proxy_values(cfg)
    proxy = proxy_locations(cfg).rstrip("\n")
    return render("nginx.conf.in", {
        **shared,
        "run_dir": cfg.path("run"), "log_dir": cfg.path("log"), "tls_dir": cfg.path("tls"),
        "nginx_temp": cfg.path("nginx-temp"), "listen": cfg.listen,
        "nginx_d": cfg.path("nginx.d"), "webapp_dir": cfg.webapp_root,
        "http_port": cfg.http_port, "https_port": cfg.https_port,
        "upstream_servers": servers, "rate_limit": cfg.rate_limit,
        "rate_limit_exempt": exempt, "max_body_size": cfg.max_body_size,
        "max_upload_size": cfg.max_upload_size,
        "max_upload_body_size": upload_body_limit(cfg.max_upload_size), "proxy": proxy,
        "open_files": open_files_limit(), "worker_connections": open_files_limit() // 2,
        **edge_parts(cfg),
    })


def mongod_programs(cfg: StackConfig, common: dict[str, object]) -> list[str]:
    """The standalone `mongod`, or one `mongod_<port>` per member of the replica set, each
    with its own data directory (group `mongo`)."""
    if not cfg.replica_set:
        return [render("supervisor-mongod.conf.in", {
            **common, "program": "mongod", "mongod": find_mongod(),
            "mongo_data": cfg.path("mongo"), "mongo_port": cfg.mongo_port,
            # One member of a set whose others run on other hosts (scripts/lab).
            "replica_set_options": f" --replSet {cfg.mongo_replica_set}"
                                   if cfg.mongo_replica_set else "",
        })]
    names = [f"mongod_{port}" for port in cfg.mongo_ports]
    programs = [render("supervisor-mongod.conf.in", {
        **common, "program": name, "mongod": find_mongod(),
        "mongo_data": cfg.path("mongo", str(port)), "mongo_port": port,
        "replica_set_options": f" --replSet {REPLICA_SET_NAME}",
    }) for name, port in zip(names, cfg.mongo_ports, strict=True)]
    # A group's own priority (supervisord's default is 999) orders it among the programs:
    # MongoDB starts first and stops last, after the worker has finished its jobs.
    return [*programs, f"[group:mongo]\nprograms = {','.join(names)}\npriority = 10\n"]


def supervisord_conf(cfg: StackConfig) -> str:
    common: dict[str, object] = {
        "project_root": PROJECT_ROOT, "log_dir": cfg.path("log"), "run_dir": cfg.path("run"),
        "python": sys.executable, "address": cfg.address,
        # Redis refuses every client but loopback's without a password (protected mode); a host
        # of the lab binds its own address on a network that exists only inside the lab.
        "protected_mode": "yes" if cfg.address == "127.0.0.1" else "no",
    }
    programs = []
    if not cfg.external_mongo_uri:
        programs.extend(mongod_programs(cfg, common))
    if not cfg.external_redis_url:
        programs.append(render("supervisor-redis.conf.in", {
            **common, "program": "redis", "redis_server": find_redis_server(),
            "redis_data": cfg.path("redis"), "redis_port": cfg.redis_port,
            "role": "The cache, rate limits, revocation copies and pub/sub.",
            "persistence": "--appendonly yes --appendfsync everysec",
        }))
    if cfg.queue_sentinels:
        programs.extend(queue_sentinel_programs(cfg, common))
    elif not cfg.external_broker_url and not cfg.external_redis_url:
        programs.append(render("supervisor-redis.conf.in", {
            **common, "program": "broker", "redis_server": find_redis_server(),
            "redis_data": cfg.path("broker"), "redis_port": cfg.broker_port,
            "role": "The job queue: a queued job is on disk before POST /jobs answers 202 "
                    "(fsync on every write), and a full queue refuses work rather than "
                    "evicting jobs.",
            "persistence": "--appendonly yes --appendfsync always --maxmemory-policy noeviction",
        }))
    addresses = {
        "mongo_uri": _supervisor_value(cfg.mongo_uri),
        "redis_url": _supervisor_value(cfg.redis_url),
        "broker_url": _supervisor_value(cfg.broker_url),
        "result_backend": _supervisor_value(cfg.result_backend),
        "broker_master_name": _supervisor_value(cfg.broker_master_name),
        "db_name": cfg.db_name, "secret_file": cfg.path("secret"),
    }
    for port in cfg.ports:
        programs.append(render("supervisor-instance.conf.in", {
            **common, **addresses, "port": port, "drain_seconds": DRAIN_SECONDS,
            "instance_name": cfg.instance_name(port),
            "stop_wait_seconds": DRAIN_SECONDS + 10,
        }))
    group = ",".join(f"todo_{port}" for port in cfg.ports)
    programs.append(f"[group:todo]\nprograms = {group}\n")
    programs.append(render("supervisor-celery.conf.in", {
        **common, **addresses, "concurrency": WORKER_CONCURRENCY,
        # A warm shutdown lets the running jobs finish: wait for the longest one, and more.
        "stop_wait_seconds": load_celery_config().LONGEST_JOB_SECONDS + 60,
    }))
    programs.append(render("supervisor-nginx.conf.in", {
        **common, "nginx": find_nginx(), "nginx_conf": cfg.path("run", "nginx.conf"),
    }))
    programs = [section for section in programs if cfg.runs(program_role(section))]
    return render("supervisord.conf.in", {
        **common, "programs": "\n".join(programs), "open_files": open_files_limit(),
    })


# What `StackConfig.programs` names: a role -> the supervisor programs and groups it stands
# for (a program's name is one of these, or one of these and "_<port>").
PROGRAM_ROLES = {
    "mongod": ("mongod", "mongo"), "redis": ("redis",), "broker": ("broker",),
    "instances": ("todo",), "celery": ("celery",), "nginx": ("nginx",),
    # With --queue-sentinels: `broker` is then also `broker_replica`.
    "sentinels": ("sentinel", "sentinels"),
}


def program_role(section: str) -> str:
    """The role (a key of PROGRAM_ROLES) of a rendered [program:…] or [group:…] section."""
    match = re.search(r"^\[(?:program|group):([^\]]+)\]", section, re.MULTILINE)
    name = match.group(1) if match else ""
    for role, prefixes in PROGRAM_ROLES.items():
        if any(name == prefix or name.startswith(f"{prefix}_") for prefix in prefixes):
            return role
    return name


QUEUE_ROLE = ("The job queue: a queued job is on disk before POST /jobs answers 202 (fsync on "
              "every write), and a full queue refuses work rather than evicting jobs.")


# The queue's nodes' programs, in the order of StackConfig.queue_node_addresses.
QUEUE_NODE_PROGRAMS = ("broker", "broker_replica")


def queue_sentinel_programs(cfg: StackConfig, common: dict[str, object]) -> list[str]:
    """The queue behind Sentinels: of `broker` (the first master) and `broker_replica`, each
    started in the role the Sentinels give it, and of the Sentinels (group `sentinels`), those
    on this host's address (all of them on one machine)."""
    sentinels = ",".join(f"{host}:{port}" for host, port in cfg.sentinel_addresses)
    first = cfg.queue_node_addresses[0]
    programs = [render("supervisor-redis.conf.in", {
        **common, "program": program, "redis_data": cfg.path(program), "redis_port": port,
        "redis_server": f"{sys.executable} -m scripts.stack.sentinel --me {host}:{port} "
                        f"--sentinels {sentinels}"
                        + ("" if (host, port) == first else f" --replica-of {first[0]}:{first[1]}")
                        + f" --master-name {cfg.broker_master_name} -- {find_redis_server()}",
        "role": f"{QUEUE_ROLE} Its role (master or replica) is the one the Sentinels give it.",
        "persistence": " ".join(sentinel.QUEUE_NODE_OPTIONS),
    }) for program, (host, port) in own_queue_nodes(cfg)]
    ports = [port for host, port in cfg.sentinel_addresses if host == cfg.address]
    names = [f"sentinel_{port}" for port in ports]
    programs += [render("supervisor-sentinel.conf.in", {
        **common, "program": name, "redis_server": find_redis_server(),
        "sentinel_conf": cfg.path("sentinel", str(port), "sentinel.conf"),
    }) for name, port in zip(names, ports, strict=True)]
    # A group starts and stops by its own priority (999 unless given): the Sentinels' is
    # their programs', so they start before the queue's nodes and stop after the worker,
    # which asks them for the master while it shuts down.
    if names:
        programs.append(f"[group:sentinels]\nprograms = {','.join(names)}\npriority = 5\n")
    return programs


def own_queue_nodes(cfg: StackConfig) -> list[tuple[str, tuple[str, int]]]:
    """(program, address) of the queue's nodes on this host's address."""
    return [(program, node) for program, node
            in zip(QUEUE_NODE_PROGRAMS, cfg.queue_node_addresses, strict=True)
            if node[0] == cfg.address]


def prepare_queue_sentinels(cfg: StackConfig) -> None:
    """This host's queue nodes' data directories, and each of its Sentinels' config, fresh
    at every `up`: the queue starts with the first node as its master (after a failover both
    nodes hold the same jobs once the old master has synced; a job lost otherwise is
    published again from MongoDB by the sweeper)."""
    for program, _ in own_queue_nodes(cfg):
        cfg.path(program).mkdir(parents=True, exist_ok=True)
    master_host, master_port = cfg.queue_node_addresses[0]
    for host, port in cfg.sentinel_addresses:
        if host != cfg.address:
            continue
        directory = cfg.path("sentinel", str(port))
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "sentinel.conf").write_text(sentinel.sentinel_conf(
            port=port, directory=directory, master_port=master_port,
            sentinels=len(cfg.sentinel_addresses), host=host, master_host=master_host,
            master_name=cfg.broker_master_name,
        ))
