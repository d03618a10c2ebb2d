"""The production topology on one machine: supervisord runs MongoDB, Redis, one Tornado instance
per core and nginx in front; this command brings it up, down, and restarts it without a dropped
request.

    todo-stack up [--instances N] [--http-port 8000] [--https-port 8443] [--base-port 8001]
    todo-stack status | down | restart
    todo-stack up --edge off        every request to the instances (nginx without Lua)
    todo-stack up --replica-set 3   MongoDB as a 3-member replica set (one member may fail)
    todo-stack up --queue-sentinels 3   the job queue's Redis with a replica and 3 Sentinels
    todo-stack edge on|off          switch the edge of the running stack (nginx reloads)
    todo-stack ctl -- status | restart todo:* | tail -f todo:todo_8001

Everything the stack writes (data, logs, pid files, generated configs, the TLS certificate)
lives under one directory, `var/` by default. TODO_MONGO_URI / TODO_REDIS_URL point the stack
at servers of your own, and then no local mongod / redis-server is started.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from pymongo.errors import PyMongoError

from scripts.create_indexes import create_indexes
from scripts.local_services import alive, port_in_use
from scripts.stack import replica_set, sentinel
from scripts.stack.assets import AssetError, publish_webapp, unreachable_for_workers
from scripts.stack.config import (
    DEFAULT_VAR,
    StackConfig,
    StackError,
    nginx_conf,
    prepare_queue_sentinels,
    supervisord_conf,
)
from scripts.stack.supervisor import Supervisor, check_nginx_conf
from server.infra.queue import load_celery_config
from server.infra.settings import Settings, load_or_create_secret


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
        wanted += [(port, "mongod") for port in cfg.mongo_ports]
    if not cfg.external_redis_url:
        wanted.append((cfg.redis_port, "redis-server"))
        if not cfg.external_broker_url:
            wanted.append((cfg.broker_port, "redis-server of the job queue"))
    wanted += queue_sentinel_ports(cfg)
    for port, role in wanted:
        host = cfg.listen if role.startswith("nginx") else "127.0.0.1"
        if port_in_use(port, host):
            raise StackError(f"port {port} ({role}) is already in use on {host}")
    ports = [port for port, _ in wanted]
    if len(set(ports)) != len(ports):
        raise StackError(f"two parts of the stack would share a port: {sorted(ports)}")


def queue_sentinel_ports(cfg: StackConfig) -> list[tuple[int, str]]:
    """The ports the queue's replica and Sentinels take (none without --queue-sentinels)."""
    if not cfg.queue_sentinels:
        return []
    return [(cfg.broker_replica_port, "redis-server of the job queue's replica"),
            *[(port, "Sentinel of the job queue") for port in cfg.sentinel_ports]]


def prepare(cfg: StackConfig) -> Supervisor:
    # nginx.d/: config files tools drop in (nginx.conf includes them; see scripts/bench).
    subs = ("run", "log", "mongo", "redis", "broker", "tls", "nginx.d/http", "nginx.d/server")
    for sub in subs:
        cfg.path(sub).mkdir(parents=True, exist_ok=True)
    for port in cfg.mongo_ports if cfg.replica_set else ():
        cfg.path("mongo", str(port)).mkdir(exist_ok=True)
    if cfg.queue_sentinels:
        prepare_queue_sentinels(cfg)
    temp = cfg.path("nginx-temp")
    temp.mkdir(exist_ok=True)
    temp.chmod(0o1777)  # nginx workers run unprivileged
    load_or_create_secret(cfg.path("secret"))  # before the instances race to create it
    ensure_tls_certificate(cfg)
    try:
        publish_webapp(cfg.webapp_root)
    except AssetError as exc:
        raise StackError(f"the web app cannot be published: {exc}") from None
    hidden = unreachable_for_workers(cfg.webapp_root)
    if hidden is not None:  # the API works all the same; only the page would be a 404
        print(f"todo-stack: warning: nginx's workers cannot enter {hidden} (chmod o+x it), so "
              "the web app at / will answer 404", file=sys.stderr)
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
    if cfg.replica_set and not cfg.external_mongo_uri:
        try:
            replica_set.initiate(cfg.mongo_hosts, timeout=timeout)
        except replica_set.ReplicaSetError as exc:
            raise StackError(str(exc)) from None
    create_indexes_when_ready(cfg, timeout)
    wait_for_http(f"{cfg.base_url}/readyz", timeout)
    if cfg.queue_sentinels and not sentinel.wait_ready_to_fail_over(
            cfg.sentinel_addresses, 1, timeout):
        raise StackError("the job queue's Sentinels did not find its replica "
                         f"within {timeout:.0f}s: see {cfg.path('log')}/sentinel_*.log")
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
    print(f"Web app:  {cfg.base_url}/  in a browser")
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


def switch_edge(cfg: StackConfig, on: bool) -> None:
    """Turn the edge on or off in the running stack: nginx reloads gracefully (HUP), its old
    workers finish what they serve. Saved, so a later restart keeps the choice."""
    supervisor = Supervisor(cfg)
    if supervisor.pid() is None:
        raise StackError("the stack is not running")
    cfg.edge = on
    supervisor.reload_nginx()
    cfg.save()
    print(f"edge {'on' if on else 'off'}")


def _on_off(text: str) -> bool:
    if text not in ("on", "off"):
        raise argparse.ArgumentTypeError("on or off")
    return text == "on"


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
    start.add_argument("--mongo-port", type=int, default=defaults.mongo_port,
                       help="the local mongod's port; a replica set's members take the next "
                            "ones too")
    start.add_argument("--replica-set", type=int, default=defaults.replica_set, metavar="N",
                       help="run MongoDB as an N-member replica set (3 survives the loss of "
                            "any one member); 0, the default: one standalone mongod")
    start.add_argument("--redis-port", type=int, default=defaults.redis_port)
    start.add_argument("--broker-port", type=int, default=defaults.broker_port,
                       help="port of the job queue's own Redis")
    start.add_argument("--queue-sentinels", type=int, default=defaults.queue_sentinels,
                       metavar="N",
                       help="give the job queue's Redis a replica (on --broker-port + 1) and N "
                            "Sentinels that promote it when the master fails (3 survives the "
                            "loss of any one); 0, the default: one Redis")
    start.add_argument("--sentinel-port", type=int, default=defaults.sentinel_port,
                       help="the first Sentinel's port; the others follow consecutively")
    start.add_argument("--db-name", default=defaults.db_name)
    start.add_argument("--rate-limit", type=int, default=defaults.rate_limit,
                       help="requests per second per client address (nginx limit_req)")
    start.add_argument("--rate-limit-burst", type=int, default=defaults.rate_limit_burst)
    start.add_argument("--rate-limit-exempt", default=",".join(defaults.rate_limit_exempt),
                       help="comma-separated client addresses never rate limited")
    start.add_argument("--edge", type=_on_off, default=defaults.edge, metavar="on|off",
                       help="nginx answers the cached first page itself (needs its Lua "
                            "modules; default on)")
    start.add_argument("--webapp-dir", type=Path, default=None,
                       help="where to publish the web app for nginx (default: VAR/webapp); "
                            "nginx's workers must be able to read it")
    edge = commands.add_parser("edge", help="switch the running stack's edge on or off")
    edge.add_argument("state", type=_on_off, metavar="on|off")
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
    if args.replica_set < 0 or args.replica_set > 7:
        raise StackError("--replica-set must be 0 (a standalone mongod) to 7 members")
    check_queue_sentinels(args.queue_sentinels)
    return StackConfig(
        var=str(args.var.resolve()), instances=args.instances, base_port=args.base_port,
        http_port=args.http_port, https_port=args.https_port, listen=args.listen,
        mongo_port=args.mongo_port, replica_set=args.replica_set, redis_port=args.redis_port,
        broker_port=args.broker_port,
        external_mongo_uri=os.environ.get("TODO_MONGO_URI", ""),
        external_redis_url=os.environ.get("TODO_REDIS_URL", ""),
        external_broker_url=os.environ.get("TODO_BROKER_URL", ""),
        db_name=args.db_name, rate_limit=args.rate_limit, rate_limit_burst=args.rate_limit_burst,
        rate_limit_exempt=tuple(a.strip() for a in args.rate_limit_exempt.split(",") if a.strip()),
        edge=args.edge,
        queue_sentinels=args.queue_sentinels, sentinel_port=args.sentinel_port,
        broker_master_name=os.environ.get("TODO_BROKER_MASTER_NAME")
        or StackConfig.broker_master_name,
        webapp_dir=str(args.webapp_dir.resolve()) if args.webapp_dir else "",
    )


def check_queue_sentinels(count: int) -> None:
    """--queue-sentinels runs the queue's own Redis: never beside a queue of one's own."""
    if count and not 3 <= count <= 7:
        raise StackError("--queue-sentinels must be 0 (one Redis) or 3 to 7 Sentinels")
    for name in ("TODO_BROKER_URL", "TODO_REDIS_URL"):
        if count and os.environ.get(name):
            raise StackError(f"--queue-sentinels runs the job queue's own Redis; {name} names "
                             "a server of yours: leave one of them out")


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
        elif args.command == "edge":
            switch_edge(StackConfig.load(var), args.state)
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
