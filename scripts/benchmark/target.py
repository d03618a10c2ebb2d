"""Where the benchmark points. A Target names the stack whose nginx it loads (its base URL, its
MongoDB, Redis and nginx.d come from that stack's config), where the floor's bare Tornado
processes run, how that nginx's config is checked and its edge switched, and which supervisors
run the instances (their memory). `Target` is the one-machine stack on loopback; the lab's
(scripts/netlab/bench.py) is its edge host as its client host sees it, with the app hosts
behind it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass

from scripts.local_services import free_port
from scripts.stack.config import StackConfig
from scripts.stack.supervisor import check_nginx_conf


@dataclass(frozen=True)
class FloorSpot:
    """One floor process: the address and port it binds, and how a command runs where it
    runs (nothing on this machine; `ip netns exec <host>` for a host of the lab)."""

    address: str
    port: int
    prefix: tuple[str, ...] = ()


class Target:
    """The one-machine stack: nginx, the instances, MongoDB and Redis on loopback."""

    title = "Benchmark results"

    def __init__(self, cfg: StackConfig) -> None:
        self.cfg = cfg

    @property
    def base_url(self) -> str:
        return self.cfg.base_url

    @property
    def client_address(self) -> str:
        """The address the load comes from, which nginx must not rate-limit."""
        return "127.0.0.1"

    @property
    def instances(self) -> int:
        return self.cfg.instances

    def describe(self) -> str:
        """Where the numbers come from, for the results file."""
        return f"{self.instances} instances"

    def instance_stacks(self) -> dict[str, StackConfig]:
        """The stacks whose supervisord runs instances, by host ("" on one machine)."""
        return {"": self.cfg}

    def floor_spots(self) -> list[FloorSpot]:
        """One bare Tornado process per core, on loopback."""
        return [FloorSpot("127.0.0.1", free_port()) for _ in range(os.cpu_count() or 1)]

    def check_nginx(self) -> None:
        check_nginx_conf(self.cfg)

    def switch_edge(self, state: str) -> str | None:
        """The stack's edge "on" or "off" (nginx reloads): None once done, else why not."""
        result = subprocess.run(
            [sys.executable, "-m", "scripts.stack.commands", "--var", str(self.cfg.root),
             "edge", state], capture_output=True, text=True, timeout=120, check=False,
        )
        return None if result.returncode == 0 else (result.stderr or result.stdout).strip()
