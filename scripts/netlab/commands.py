"""`scripts/lab up|down|status|client`: the stack across network-namespace hosts on this
machine (docs/lab.md). Each host runs its part of the stack under a supervisord of its own,
rendered by todo-stack's config code; everything the lab writes lives under `var/lab/`.

    scripts/lab up [--instances-per-host 1]   build the network, start every host, wait
    scripts/lab status                        hosts, addresses, processes, health, containment
    scripts/lab down                          every process (by pid), namespace and link gone
    scripts/lab client -- curl -s http://10.211.0.10/healthz    a command on the client host
    scripts/lab edge on|off                   the edge host's nginx with its edge on or off
    scripts/lab bench [--runs 3 ...]          the benchmark (scripts/bench) from the client host
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from scripts.local_services import alive
from scripts.netlab import netns
from scripts.netlab.topology import DEFAULT_NAME, DEFAULT_SUBNET, START_ORDER, Lab
from scripts.stack.assets import AssetError, publish_webapp, unreachable_for_workers
from scripts.stack.commands import ensure_tls_certificate
from scripts.stack.config import (
    DEFAULT_VAR,
    StackConfig,
    StackError,
    find_nginx,
    nginx_conf,
    prepare_queue_sentinels,
    supervisord_conf,
)
from scripts.stack.supervisor import RELOAD_GRACE_SECONDS, Supervisor
from server.infra.settings import load_or_create_secret

READY_TIMEOUT = 120.0
STOP_TIMEOUT = 90.0


# -- one host ------------------------------------------------------------------------------
def prepare_host(lab: Lab, name: str, secret: str) -> StackConfig:
    """The host's folders, the lab's one secret, and its generated configs."""
    cfg = lab.stack_config(name)
    for sub in ("run", "log", "mongo", "redis"):
        cfg.path(sub).mkdir(parents=True, exist_ok=True)
    if cfg.queue_sentinels:  # a queue node and a Sentinel, or a Sentinel alone
        prepare_queue_sentinels(cfg)
    # Every host of the lab signs and checks tokens with the same secret, as real hosts would.
    secret_file = cfg.path("secret")
    secret_file.write_text(secret + "\n")
    secret_file.chmod(0o600)
    if cfg.runs("nginx"):
        for sub in ("nginx.d/http", "nginx.d/server", "nginx-temp"):
            cfg.path(sub).mkdir(parents=True, exist_ok=True)
        cfg.path("nginx-temp").chmod(0o1777)  # nginx's workers run unprivileged
        ensure_tls_certificate(cfg)
        try:
            publish_webapp(cfg.webapp_root)
        except AssetError as exc:
            raise StackError(f"the web app cannot be published: {exc}") from None
        hidden = unreachable_for_workers(cfg.webapp_root)
        if hidden is not None:
            print(f"lab: warning: nginx's workers cannot enter {hidden}; / will be a 404",
                  file=sys.stderr)
        cfg.path("run", "nginx.conf").write_text(nginx_conf(cfg))
        check_nginx_conf_in(lab.host(name).netns, cfg)
    Supervisor(cfg).conf.write_text(supervisord_conf(cfg))
    cfg.save()
    return cfg


def check_nginx_conf_in(namespace: str, cfg: StackConfig) -> None:
    """`nginx -t` where nginx will run: it binds its listeners, which exist only there."""
    result = subprocess.run(
        netns.exec_in(namespace, find_nginx(), "-t", "-q", "-c",
                      str(cfg.path("run", "nginx.conf")), "-e",
                      str(cfg.path("log", "nginx-error.log"))),
        capture_output=True, text=True, timeout=30, check=False)
    if result.returncode != 0:
        raise StackError(f"nginx rejects the generated config: {result.stderr.strip()}")


def start_host(lab: Lab, name: str, cfg: StackConfig) -> None:
    """supervisord inside the host's namespace, with a hostname of its own (a UTS namespace:
    Celery names its workers after the hostname)."""
    supervisor = Supervisor(cfg)
    command = netns.exec_in(
        lab.host(name).netns, "unshare", "--uts", "--", "sh", "-c",
        'hostname "$1" && shift && exec "$@"', "sh", lab.host(name).netns,
        sys.executable, "-m", "supervisor.supervisord", "-c", str(supervisor.conf))
    subprocess.run(command, check=True, timeout=60)
    deadline = time.monotonic() + 30
    while supervisor.pid() is None:
        if time.monotonic() > deadline:
            raise StackError(f"supervisord of {name} did not start; see {cfg.path('log')}")
        time.sleep(0.1)


def stop_hosts(lab: Lab, names: list[str], timeout: float = STOP_TIMEOUT) -> None:
    """supervisorctl shutdown on every host at once (each program stops its own way: jobs
    finish, requests drain), then wait until none of their processes is left; what is left
    after `timeout` is killed by pid."""
    supervisors = [Supervisor(lab.stack_config(name)) for name in names]
    running = [supervisor for supervisor in supervisors if supervisor.pid() is not None]

    def shut_down(supervisor: Supervisor) -> list[int]:
        pids = supervisor.all_pids()
        supervisor.ctl("shutdown", check=False)
        return pids

    with ThreadPoolExecutor(max_workers=max(1, len(running))) as pool:
        known = [pid for pids in pool.map(shut_down, running) for pid in pids]

    def left() -> list[int]:
        in_hosts = [pid for name in names for pid in netns.pids(lab.host(name).netns)]
        return [pid for pid in {*known, *in_hosts} if alive(pid)]

    deadline = time.monotonic() + timeout
    while left() and time.monotonic() < deadline:
        time.sleep(0.2)
    for pid in left():
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


# -- inside the lab ------------------------------------------------------------------------
def run_inside(lab: Lab, task: str, timeout: float = 60.0) -> dict[str, str]:
    """A task of scripts/netlab/inside.py, run on the client host."""
    command = netns.exec_in(lab.host("client").netns, sys.executable, "-m",
                            "scripts.netlab.inside", task, str(lab.path("lab.json")),
                            "--timeout", str(timeout))
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout + 30,
                            check=False)
    if result.returncode != 0:
        raise StackError(f"{task} in the lab failed: {result.stderr.strip()[-500:]}")
    # The task's answer is its last line (creating the indexes prints what it made first).
    answer: dict[str, str] = json.loads(result.stdout.strip().splitlines()[-1])
    return answer


def wait_ready(lab: Lab, address: str, port: int, timeout: float) -> None:
    """Until /readyz at address:port answers 200 to the client host."""
    client = lab.host("client").netns
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            status, body = netns.http_get(client, address, port, "/readyz", timeout=2.0)
            if status == 200:
                return
            last = f"{status} {body[:200]!r}"
        except OSError as exc:
            last = str(exc)
        time.sleep(0.3)
    raise StackError(f"{address}:{port}/readyz did not answer 200 in {timeout:.0f}s ({last})")


def queue_ready(report: dict[str, str]) -> bool:
    """Whether the `queue` task's report shows a queue that can fail over: every Sentinel
    names the master, knows the others and the replica, and the replica has synced."""
    sentinels = [answer for part, answer in report.items() if part.startswith("sentinel ")]
    master = report["queue master"].split()[0]
    knows = f"master {master}, {len(sentinels) - 1} other Sentinels, 1 replica(s)"
    return (all(answer == knows for answer in sentinels)
            and any(answer.endswith("(connected)") for answer in report.values()))


def wait_queue_ready(lab: Lab, timeout: float) -> dict[str, str]:
    """Until the queue can fail over (the Sentinels find each other within about 2 s)."""
    deadline = time.monotonic() + timeout
    while not queue_ready(report := run_inside(lab, "queue", timeout)):
        if time.monotonic() > deadline:
            raise StackError(f"the job queue's Sentinels are not ready: {report}")
        time.sleep(0.5)
    return report


def listeners(lab: Lab) -> dict[str, list[str]]:
    """Each host -> the local addresses its processes listen on (TCP)."""
    found = {}
    for host in lab.hosts.values():
        if netns.exists(host.netns):
            out = subprocess.run(netns.exec_in(host.netns, "ss", "-ltnH"), capture_output=True,
                                 text=True, timeout=30, check=True).stdout
            found[host.name] = sorted({line.split()[3] for line in out.splitlines()})
    return found


def stray_listeners(lab: Lab) -> list[str]:
    """Listeners on any address but their host's own: every process binds its host's."""
    return [f"{name} listens on {local}" for name, locals_ in listeners(lab).items()
            for local in locals_ if local.rsplit(":", 1)[0] != lab.host(name).address]


# -- the commands --------------------------------------------------------------------------
def is_up(lab: Lab | None) -> bool:
    return lab is not None and any(netns.exists(name) for name in lab.created_netns)


def up(lab: Lab, timeout: float = READY_TIMEOUT) -> None:
    reason = netns.can_build()
    if reason:
        raise StackError(reason)
    saved = Lab.load(Path(lab.var))
    if is_up(saved):
        print("the lab is already up")
        status(saved)  # type: ignore[arg-type]
        return
    taken = [name for name in lab.netns if netns.exists(name)]
    if taken:
        raise StackError(f"namespace {taken[0]} exists but is not this lab's; "
                         f"`ip netns del {taken[0]}` if it is a leftover")
    lab.save()
    try:
        _bring_up(lab, timeout)
    except BaseException:
        print("lab: up failed; removing what it made", file=sys.stderr)
        down(lab)
        raise
    status(lab)


def _bring_up(lab: Lab, timeout: float) -> None:
    started = time.monotonic()
    netns.build(lab)
    secret = load_or_create_secret(lab.path("secret"))
    configs = {name: prepare_host(lab, name, secret) for name in START_ORDER}
    for name in START_ORDER:
        start_host(lab, name, configs[name])
    print(f"lab: network and {len(START_ORDER)} supervisords up "
          f"({time.monotonic() - started:.1f}s)", flush=True)
    print(f"lab: replica set: {run_inside(lab, 'initiate', timeout)} "
          f"({time.monotonic() - started:.1f}s)", flush=True)
    run_inside(lab, "indexes", timeout)
    report = wait_queue_ready(lab, timeout)
    print(f"lab: job queue: {report['queue master']} "
          f"({time.monotonic() - started:.1f}s)", flush=True)
    for name in lab.instances():
        address, port = name.rsplit(":", 1)
        wait_ready(lab, address, int(port), timeout)
    edge = lab.host("edge").address
    wait_ready(lab, edge, configs["edge"].http_port, timeout)
    problems = netns.containment_problems(lab) + stray_listeners(lab)
    if problems:
        raise StackError(f"the lab is not contained: {'; '.join(problems)}")
    print(f"lab: ready in {time.monotonic() - started:.1f}s", flush=True)


def switch_edge(lab: Lab, on: bool) -> None:
    """`todo-stack edge on|off` for the edge host: its nginx.conf rewritten, checked where
    nginx runs (`nginx -t` binds the listeners, which exist only there), a graceful reload."""
    cfg = StackConfig.load(lab.path("edge"))
    supervisor = Supervisor(cfg)
    if supervisor.pid() is None:
        raise StackError("the edge host's supervisord is not running")
    cfg.edge = on
    cfg.path("run", "nginx.conf").write_text(nginx_conf(cfg))
    check_nginx_conf_in(lab.host("edge").netns, cfg)
    supervisor.ctl("signal", "HUP", "nginx")
    time.sleep(RELOAD_GRACE_SECONDS)  # new workers take the new config
    cfg.save()


def bench_command(lab: Lab, options: list[str]) -> list[str]:
    """scripts/netlab/bench.py on the client host: the benchmark's process runs inside the
    lab, so wrk, PyMongo and redis-py reach the lab's addresses from there only."""
    return netns.exec_in(lab.host("client").netns, sys.executable, "-m", "scripts.netlab.bench",
                         str(lab.path("lab.json")), *options)


def down(lab: Lab) -> None:
    """Every process (supervisord's shutdown, then by pid), namespace and link of the lab."""
    front = ["edge", "app1", "app2"]
    stop_hosts(lab, front)
    stop_hosts(lab, [name for name in START_ORDER if name not in front])
    netns.remove(lab)
    lab.save()
    print("the lab is down")


def status(lab: Lab) -> None:
    print(f"lab {lab.name}: subnet {lab.subnet}, state in {lab.var}")
    print(f"{'host':8} {'namespace':14} {'address':13} programs")
    for host in lab.hosts.values():
        state = "" if netns.exists(host.netns) else "  (no namespace)"
        print(f"{host.name:8} {host.netns:14} {host.address:13} "
              f"{', '.join(host.programs) or '(clients: tests, curl, wrk)'}{state}")
    print("\nprocesses:")
    for name in START_ORDER:
        supervisor = Supervisor(lab.stack_config(name))
        pid = supervisor.pid()
        print(f"  {name}: supervisord " + (f"pid {pid}" if pid else "not running"))
        if pid:
            for line in supervisor.ctl("status", check=False).splitlines():
                print(f"    {line}")
    print("\nhealth (from the client host):")
    try:
        for part, answer in run_inside(lab, "health", 10.0).items():
            print(f"  {part}: {answer if len(answer) <= 110 else answer[:107] + '...'}")
    except StackError as exc:
        print(f"  {exc}")
    problems = netns.containment_problems(lab) + stray_listeners(lab)
    print("\ncontainment: " + ("; ".join(problems) if problems else
                               "ok (no lab address or route in the root namespace, no default "
                               "route in the lab, every listener on its host's address)"))
    print(f"\nAPI: {lab.edge_url} (from the client host: scripts/lab client -- curl -s "
          f"{lab.edge_url}/readyz)")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="scripts/lab", description=__doc__.split("\n")[0])
    parser.add_argument("--var", type=Path, default=DEFAULT_VAR / "lab",
                        help="where the lab keeps its hosts' data, logs and configs")
    commands = parser.add_subparsers(dest="command", required=True)
    start = commands.add_parser("up", help="build the network, start every host, wait")
    start.add_argument("--instances-per-host", type=int, default=1)
    start.add_argument("--name", default=DEFAULT_NAME, help="prefix of the namespaces")
    start.add_argument("--subnet", default=DEFAULT_SUBNET)
    commands.add_parser("down", help="stop every process, remove every namespace and link")
    commands.add_parser("status", help="hosts, addresses, processes, health, containment")
    client = commands.add_parser("client", help="run a command on the client host")
    client.add_argument("args", nargs=argparse.REMAINDER)
    edge = commands.add_parser("edge", help="the edge host's nginx with its edge on or off")
    edge.add_argument("state", choices=("on", "off"))
    commands.add_parser("bench", help="the benchmark from the client host against the edge "
                                      "host; options as scripts/bench's but the stack's own")
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = _parser()
    args, rest = parser.parse_known_args(argv)
    if rest and args.command != "bench":
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    var = args.var.resolve()
    try:
        if args.command == "up":
            up(Lab(name=args.name, subnet=args.subnet, var=str(var),
                   instances_per_host=args.instances_per_host))
            return
        lab = Lab.load(var)
        if not is_up(lab):
            print("the lab is not up")
            sys.exit(3 if args.command in ("status", "edge", "bench") else 0)
        assert lab is not None
        if args.command == "down":
            down(lab)
        elif args.command == "status":
            status(lab)
        elif args.command == "edge":
            switch_edge(lab, args.state == "on")
            print(f"edge {args.state}")
        elif args.command == "bench":
            command = bench_command(lab, [a for a in rest if a != "--"])
            os.execvp(command[0], command)  # noqa: S606 - the benchmark's output is the user's
        else:
            command = netns.exec_in(lab.host("client").netns,
                                    *[a for a in args.args if a != "--"])
            os.execvp(command[0], command)  # noqa: S606 - hand the terminal to the command
    except StackError as exc:
        sys.exit(f"lab: {exc}")
    except subprocess.CalledProcessError as exc:
        sys.exit(f"lab: {' '.join(map(str, exc.cmd))} failed with status {exc.returncode}")



if __name__ == "__main__":
    main()
