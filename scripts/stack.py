"""The production topology on one machine: supervisord runs MongoDB, Redis, one Tornado instance
per core and nginx in front; this command brings it up, down, and restarts it without a dropped
request.

    todo-stack up [--instances N] [--http-port 8000] [--https-port 8443] [--base-port 8001]
    todo-stack status | down | restart
    todo-stack ctl -- status | restart todo:* | tail -f todo:todo_8001

Everything the stack writes (data, logs, pid files, generated configs, the TLS certificate)
lives under one directory, `var/` by default. TODO_MONGO_URI / TODO_REDIS_URL point the stack
at servers of your own, and then no local mongod / redis-server is started.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from pymongo.errors import PyMongoError

from scripts.create_indexes import create_indexes
from scripts.local_services import alive, find_mongod, find_redis_server, port_in_use
from server.domain.import_form import body_limit as upload_body_limit
from server.infra.queue import load_celery_config
from server.infra.settings import PROJECT_ROOT, Settings, load_or_create_secret

CONF_DIR = PROJECT_ROOT / "conf"
DEFAULT_VAR = PROJECT_ROOT / "var"
DRAIN_SECONDS = 10
WORKER_CONCURRENCY = 2
RELOAD_GRACE_SECONDS = 1.0


class StackError(Exception):
    """The stack cannot do what was asked; the message is one line for the operator."""


def wait_for_http(url: str, timeout: float) -> None:
    """Poll `url` until it answers 200 (how `up` and `restart` know a part is ready)."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except urllib.error.HTTPError as exc:
            last = f"HTTP {exc.code}: {exc.read()[:200]!r}"
        except OSError as exc:
            last = str(exc)
        time.sleep(0.2)
    raise StackError(f"{url} did not answer 200 within {timeout:.0f}s (last: {last})")


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
    redis_port: int = 6379
    broker_port: int = 6380
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

    @property
    def root(self) -> Path:
        return Path(self.var)

    @property
    def ports(self) -> list[int]:
        return [self.base_port + i for i in range(self.instances)]

    @property
    def mongo_uri(self) -> str:
        return self.external_mongo_uri or f"mongodb://127.0.0.1:{self.mongo_port}"

    @property
    def redis_url(self) -> str:
        return self.external_redis_url or f"redis://127.0.0.1:{self.redis_port}/0"

    @property
    def broker_url(self) -> str:
        """The job queue. Its own Redis by default: every write on disk before it is
        acknowledged, never an eviction. Given only a Redis of one's own (TODO_REDIS_URL), its
        database 1: never the cache's, which is flushed after an outage."""
        if self.external_broker_url:
            return self.external_broker_url
        if self.external_redis_url:
            return redis_db_url(self.external_redis_url, 1)
        return f"redis://127.0.0.1:{self.broker_port}/0"

    @property
    def result_backend(self) -> str:
        """Celery's results: the database after the queue's, on the same Redis."""
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


def nginx_conf(cfg: StackConfig, down: frozenset[int] = frozenset()) -> str:
    """nginx.conf for the instances; those in `down` get no new requests (rolling restart)."""
    servers = "\n".join(
        f"        server 127.0.0.1:{port} max_fails=1 fail_timeout=1s"
        + (" down;" if port in down else ";")
        for port in cfg.ports
    )
    exempt = "\n".join(f"        {address} 0;" for address in cfg.rate_limit_exempt)
    shared: dict[str, object] = {"rate_limit_burst": cfg.rate_limit_burst,
                                 "upstream_tries": max(2, min(cfg.instances, 3))}
    # Without the snippet's own two comment lines.
    proxy = render("nginx-proxy.conf.in", shared).split("\n", 2)[2].rstrip("\n")
    return render("nginx.conf.in", {
        **shared,
        "run_dir": cfg.path("run"), "log_dir": cfg.path("log"), "tls_dir": cfg.path("tls"),
        "nginx_temp": cfg.path("nginx-temp"), "listen": cfg.listen,
        "http_port": cfg.http_port, "https_port": cfg.https_port,
        "upstream_servers": servers, "rate_limit": cfg.rate_limit,
        "rate_limit_exempt": exempt, "max_body_size": cfg.max_body_size,
        "max_upload_size": cfg.max_upload_size,
        "max_upload_body_size": upload_body_limit(cfg.max_upload_size), "proxy": proxy,
        "open_files": open_files_limit(), "worker_connections": open_files_limit() // 2,
    })


def supervisord_conf(cfg: StackConfig) -> str:
    common: dict[str, object] = {
        "project_root": PROJECT_ROOT, "log_dir": cfg.path("log"), "run_dir": cfg.path("run"),
        "python": sys.executable,
    }
    programs = []
    if not cfg.external_mongo_uri:
        programs.append(render("supervisor-mongod.conf.in", {
            **common, "mongod": find_mongod(), "mongo_data": cfg.path("mongo"),
            "mongo_port": cfg.mongo_port,
        }))
    if not cfg.external_redis_url:
        programs.append(render("supervisor-redis.conf.in", {
            **common, "program": "redis", "redis_server": find_redis_server(),
            "redis_data": cfg.path("redis"), "redis_port": cfg.redis_port,
            "role": "The cache, rate limits, revocation copies and pub/sub.",
            "persistence": "--appendonly yes --appendfsync everysec",
        }))
    if not cfg.external_broker_url and not cfg.external_redis_url:
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
        "db_name": cfg.db_name, "secret_file": cfg.path("secret"),
    }
    for port in cfg.ports:
        programs.append(render("supervisor-instance.conf.in", {
            **common, **addresses, "port": port, "drain_seconds": DRAIN_SECONDS,
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
    return render("supervisord.conf.in", {
        **common, "programs": "\n".join(programs), "open_files": open_files_limit(),
    })


class Supervisor:
    def __init__(self, cfg: StackConfig) -> None:
        self.cfg = cfg
        self.conf = cfg.path("run", "supervisord.conf")

    def pid(self) -> int | None:
        try:
            pid = int(self.cfg.path("run", "supervisord.pid").read_text().strip())
        except (FileNotFoundError, ValueError):
            return None
        return pid if alive(pid) else None

    def all_pids(self) -> list[int]:
        """supervisord and every program it runs (what must be gone after `down`)."""
        pids = [int(word) for word in self.ctl("pid", "all", check=False).split()
                if word.isdigit() and word != "0"]
        own = self.pid()
        return pids + ([own] if own else [])

    def ctl_command(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "supervisor.supervisorctl", "-c", str(self.conf), *args]

    def ctl(self, *args: str, check: bool = True, timeout: float = 120.0) -> str:
        result = subprocess.run(self.ctl_command(*args), capture_output=True, text=True,
                                timeout=timeout, check=False)
        # supervisorctl exits non-zero when any program is not RUNNING, even for `status`.
        if check and result.returncode != 0 and args[0] != "status":
            raise StackError(f"supervisorctl {' '.join(args)}: {result.stdout}{result.stderr}")
        return result.stdout

    def start(self) -> None:
        subprocess.run([sys.executable, "-m", "supervisor.supervisord", "-c", str(self.conf)],
                       check=True, timeout=60)

    def reload_nginx(self, down: frozenset[int] = frozenset()) -> None:
        conf = self.cfg.path("run", "nginx.conf")
        conf.write_text(nginx_conf(self.cfg, down))
        check_nginx_conf(self.cfg)
        self.ctl("signal", "HUP", "nginx")
        # New workers take the new upstream list; the old ones finish what they serve.
        time.sleep(RELOAD_GRACE_SECONDS)


def check_nginx_conf(cfg: StackConfig) -> None:
    result = subprocess.run(
        [find_nginx(), "-t", "-q", "-c", str(cfg.path("run", "nginx.conf")),
         "-e", str(cfg.path("log", "nginx-error.log"))],
        capture_output=True, text=True, timeout=30, check=False,
    )
    if result.returncode != 0:
        raise StackError(f"nginx rejects the generated config: {result.stderr.strip()}")


def ensure_tls_certificate(cfg: StackConfig) -> None:
    """A self-signed certificate for localhost, made once at set-up."""
    cert, key = cfg.path("tls", "cert.pem"), cfg.path("tls", "key.pem")
    if cert.exists() and key.exists():
        return
    cert.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-days", "825", "-subj", "/CN=localhost", "-keyout", str(key), "-out", str(cert),
         "-addext", f"subjectAltName=DNS:localhost,IP:127.0.0.1,IP:{cfg.listen}"],
        check=True, capture_output=True, timeout=60,
    )
    key.chmod(0o600)


def check_ports_free(cfg: StackConfig) -> None:
    wanted = [(cfg.http_port, "nginx HTTP"), (cfg.https_port, "nginx HTTPS")]
    wanted += [(port, f"todo instance todo_{port}") for port in cfg.ports]
    if not cfg.external_mongo_uri:
        wanted.append((cfg.mongo_port, "mongod"))
    if not cfg.external_redis_url:
        wanted.append((cfg.redis_port, "redis-server"))
        if not cfg.external_broker_url:
            wanted.append((cfg.broker_port, "redis-server of the job queue"))
    for port, role in wanted:
        host = cfg.listen if role.startswith("nginx") else "127.0.0.1"
        if port_in_use(port, host):
            raise StackError(f"port {port} ({role}) is already in use on {host}")
    ports = [port for port, _ in wanted]
    if len(set(ports)) != len(ports):
        raise StackError(f"two parts of the stack would share a port: {sorted(ports)}")


def prepare(cfg: StackConfig) -> Supervisor:
    for sub in ("run", "log", "mongo", "redis", "broker", "tls"):
        cfg.path(sub).mkdir(parents=True, exist_ok=True)
    temp = cfg.path("nginx-temp")
    temp.mkdir(exist_ok=True)
    temp.chmod(0o1777)  # nginx workers run unprivileged
    load_or_create_secret(cfg.path("secret"))  # before the instances race to create it
    ensure_tls_certificate(cfg)
    supervisor = Supervisor(cfg)
    supervisor.conf.write_text(supervisord_conf(cfg))
    cfg.path("run", "nginx.conf").write_text(nginx_conf(cfg))
    check_nginx_conf(cfg)
    cfg.save()
    return supervisor


def up(cfg: StackConfig, timeout: float = 90.0) -> None:
    existing = Supervisor(cfg)
    if existing.pid() is not None:
        print(f"the stack is already running (supervisord pid {existing.pid()})")
        print_summary(Supervisor(StackConfig.load(cfg.root)))
        return
    check_ports_free(cfg)
    supervisor = prepare(cfg)
    supervisor.start()
    create_indexes_when_ready(cfg, timeout)
    wait_for_http(f"{cfg.base_url}/readyz", timeout)
    print_summary(supervisor)


def create_indexes_when_ready(cfg: StackConfig, timeout: float) -> None:
    settings = Settings(mongo_uri=cfg.mongo_uri, db_name=cfg.db_name)
    deadline = time.monotonic() + timeout
    while True:
        try:
            asyncio.run(create_indexes(settings))
            return
        except PyMongoError as exc:
            if time.monotonic() > deadline:
                raise StackError(f"MongoDB at {cfg.mongo_uri} never answered: {exc}") from None
            time.sleep(0.5)


def print_summary(supervisor: Supervisor) -> None:
    cfg = supervisor.cfg
    print(supervisor.ctl("status", check=False).rstrip())
    print(f"\nTodo API: {cfg.base_url}  (HTTPS: https://{cfg.listen}:{cfg.https_port}, "
          "self-signed)")
    ctl = " ".join(supervisor.ctl_command())
    print(f"supervisorctl: scripts/ctl status | scripts/ctl restart 'todo:*' | "
          f"scripts/ctl tail -f todo:todo_{cfg.base_port} | scripts/ctl tail -f celery\n"
          f"  (scripts/ctl runs: {ctl} ...)")


def down(cfg: StackConfig, timeout: float | None = None) -> None:
    """Stop everything; the Celery worker first lets its running jobs finish (warm shutdown),
    so this may take as long as the longest job."""
    if timeout is None:
        timeout = load_celery_config().LONGEST_JOB_SECONDS + 120.0
    supervisor = Supervisor(cfg)
    pid = supervisor.pid()
    if pid is None:
        print("the stack is not running")
        return
    pids = supervisor.all_pids()
    supervisor.ctl("shutdown", check=False)
    deadline = time.monotonic() + timeout
    while any(alive(pid) for pid in pids):
        if time.monotonic() > deadline:
            left = [pid for pid in pids if alive(pid)]
            raise StackError(f"processes {left} of the stack did not stop within {timeout:.0f}s")
        time.sleep(0.2)
    print("the stack is stopped")


def rolling_restart(cfg: StackConfig, timeout: float = 60.0) -> None:
    """Restart the instances one at a time; nginx sends nothing to the one restarting, and the
    next one goes only after the previous one answers /readyz again. Then the worker, warm:
    it finishes its running jobs first, while new ones wait in the queue."""
    supervisor = Supervisor(cfg)
    if supervisor.pid() is None:
        raise StackError("the stack is not running")
    for port in cfg.ports:
        supervisor.reload_nginx(down=frozenset({port}))
        supervisor.ctl("restart", f"todo:todo_{port}")
        wait_for_http(f"http://127.0.0.1:{port}/readyz", timeout)
        supervisor.reload_nginx()
        print(f"todo_{port} restarted and ready")
    print("celery: restarting once its running jobs are done ...", flush=True)
    supervisor.ctl("restart", "celery",
                   timeout=load_celery_config().LONGEST_JOB_SECONDS + 120.0)
    print("celery restarted")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="todo-stack", description=__doc__.split("\n")[0])
    parser.add_argument("--var", type=Path, default=DEFAULT_VAR,
                        help="where the stack keeps data, logs and generated configs")
    commands = parser.add_subparsers(dest="command", required=True)
    start = commands.add_parser("up", help="install configs, start everything, wait until ready")
    defaults = StackConfig()
    start.add_argument("--instances", type=int, default=defaults.instances,
                       help="Tornado instances (default: one per CPU core)")
    start.add_argument("--base-port", type=int, default=defaults.base_port)
    start.add_argument("--http-port", type=int, default=defaults.http_port)
    start.add_argument("--https-port", type=int, default=defaults.https_port)
    start.add_argument("--listen", default=defaults.listen,
                       help="address nginx listens on (loopback by default)")
    start.add_argument("--mongo-port", type=int, default=defaults.mongo_port)
    start.add_argument("--redis-port", type=int, default=defaults.redis_port)
    start.add_argument("--broker-port", type=int, default=defaults.broker_port,
                       help="port of the job queue's own Redis")
    start.add_argument("--db-name", default=defaults.db_name)
    start.add_argument("--rate-limit", type=int, default=defaults.rate_limit,
                       help="requests per second per client address (nginx limit_req)")
    start.add_argument("--rate-limit-burst", type=int, default=defaults.rate_limit_burst)
    start.add_argument("--rate-limit-exempt", default=",".join(defaults.rate_limit_exempt),
                       help="comma-separated client addresses never rate limited")
    commands.add_parser("down", help="stop every process of the stack")
    commands.add_parser("status", help="supervisorctl status and the URLs")
    commands.add_parser("restart", help="rolling restart of the instances (no dropped request), "
                                        "then of the worker (warm)")
    ctl = commands.add_parser("ctl", help="run supervisorctl against the stack's config")
    ctl.add_argument("args", nargs=argparse.REMAINDER)
    return parser


def _config_from(args: argparse.Namespace) -> StackConfig:
    if args.instances < 1 or args.rate_limit < 1:
        raise StackError("--instances and --rate-limit must be at least 1")
    return StackConfig(
        var=str(args.var.resolve()), instances=args.instances, base_port=args.base_port,
        http_port=args.http_port, https_port=args.https_port, listen=args.listen,
        mongo_port=args.mongo_port, redis_port=args.redis_port, broker_port=args.broker_port,
        external_mongo_uri=os.environ.get("TODO_MONGO_URI", ""),
        external_redis_url=os.environ.get("TODO_REDIS_URL", ""),
        external_broker_url=os.environ.get("TODO_BROKER_URL", ""),
        db_name=args.db_name, rate_limit=args.rate_limit, rate_limit_burst=args.rate_limit_burst,
        rate_limit_exempt=tuple(a.strip() for a in args.rate_limit_exempt.split(",") if a.strip()),
    )


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    var = args.var.resolve()
    try:
        if args.command == "up":
            up(_config_from(args))
        elif args.command == "down":
            down(StackConfig.load(var))
        elif args.command == "status":
            supervisor = Supervisor(StackConfig.load(var))
            if supervisor.pid() is None:
                print("the stack is not running")
                sys.exit(3)
            print_summary(supervisor)
        elif args.command == "restart":
            rolling_restart(StackConfig.load(var))
        else:
            command = Supervisor(StackConfig.load(var)).ctl_command(
                *[a for a in args.args if a != "--"]
            )
            os.execv(command[0], command)  # noqa: S606 - hand the terminal to supervisorctl
    except StackError as exc:
        sys.exit(f"todo-stack: {exc}")
    except subprocess.CalledProcessError as exc:
        sys.exit(f"todo-stack: {' '.join(map(str, exc.cmd))} failed with status {exc.returncode}")


if __name__ == "__main__":
    main()
