"""The benchmark (scripts/benchmark) in the lab: `scripts/lab bench [options]` runs this module
as a process on the client host (`ip netns exec <lab>-client python -m scripts.netlab.bench
LAB_JSON [options]`), so every connection it makes (the API, wrk, PyMongo for the seeding and
the write mix's check, redis-py) starts inside the lab. It refuses to run anywhere else.

The target is the edge host: its nginx serves the ceiling, its nginx.d takes the benchmark's
drop-in config (checked with `nginx -t` inside the edge host), its edge is switched as
`scripts/lab edge on|off` does it; the floor's bare Tornado processes run on the app hosts
(one per instance, bound to the host's address, started with `ip netns exec <app host>`)
behind the edge's nginx; the instances' memory comes from the app hosts' supervisors.

    python -m scripts.netlab.bench var/lab/lab.json --runs 3 --duration 5
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from scripts.benchmark import cli, wrk
from scripts.benchmark.target import FloorSpot, Target
from scripts.netlab import netns
from scripts.netlab.commands import check_nginx_conf_in, switch_edge
from scripts.netlab.inside import own_netns
from scripts.netlab.topology import Lab
from scripts.stack.config import StackConfig, StackError
from server.infra.settings import PROJECT_ROOT

APP_HOSTS = ("app1", "app2")
# Each app host's floor processes listen here and up (its instances on 8001 and up).
FLOOR_PORT = 8101
DEFAULT_OUTPUT = PROJECT_ROOT / "docs" / "benchmarks" / "lab.md"


class LabTarget(Target):
    """The lab's edge host, seen from its client host, and the app hosts behind it."""

    title = "Benchmark results in the lab"

    def __init__(self, lab: Lab) -> None:
        super().__init__(StackConfig.load(lab.path("edge")))
        self.lab = lab

    @property
    def client_address(self) -> str:
        return self.lab.host("client").address

    @property
    def instances(self) -> int:
        return len(self.lab.instances())

    def describe(self) -> str:
        lab = self.lab
        apps = " and ".join(lab.host(name).address for name in APP_HOSTS)
        return (f"in the lab (network-namespace hosts on this one machine, docs/lab.md): wrk "
                f"on the client host {lab.host('client').address}, nginx on the edge host "
                f"{lab.host('edge').address}, {self.instances} instances on the app hosts "
                f"{apps} ({lab.instances_per_host} each, beside a Celery worker; the floor's "
                f"processes there too), MongoDB a 3-member replica set on hosts of its own, "
                f"the cache's Redis on {lab.host('cache').address}")

    def instance_stacks(self) -> dict[str, StackConfig]:
        return {name: StackConfig.load(self.lab.path(name)) for name in APP_HOSTS}

    def floor_spots(self) -> list[FloorSpot]:
        """As many floor processes as instances, where the instances run."""
        return [FloorSpot(self.lab.host(name).address, FLOOR_PORT + n,
                          tuple(netns.exec_in(self.lab.host(name).netns)))
                for name in APP_HOSTS for n in range(self.lab.instances_per_host)]

    def check_nginx(self) -> None:
        check_nginx_conf_in(self.lab.host("edge").netns, self.cfg)

    def switch_edge(self, state: str) -> str | None:
        try:
            switch_edge(self.lab, state == "on")
        except StackError as exc:
            return str(exc)
        return None


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0].startswith("-"):
        sys.exit("usage: python -m scripts.netlab.bench LAB_JSON [scripts/bench options]; "
                 "scripts/lab bench runs it")
    lab = Lab(**json.loads(Path(argv[0]).read_text()))
    parser = cli.parser("scripts/lab bench", stack_options=False, output=DEFAULT_OUTPUT)
    args = cli.parse(parser, argv[1:], "scripts/lab bench")
    if own_netns() != lab.host("client").netns:
        sys.exit(f"scripts.netlab.bench: runs only on the lab's client host "
                 f"({lab.host('client').netns}): scripts/lab bench")
    try:
        wrk.check_available()
        wrk.raise_open_files_limit()
        text, ok = cli.benchmark(LabTarget(lab), args)
    except StackError as exc:
        sys.exit(f"lab bench: {exc}")
    cli.write(args, text, ok)


if __name__ == "__main__":
    main()
