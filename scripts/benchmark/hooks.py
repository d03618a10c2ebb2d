"""The ceiling and the floor behind the target's nginx: conf files in <var>/nginx.d/, which
nginx.conf includes (http level and server level), checked the target's way (`nginx -t` where
that nginx runs), and a graceful reload (HUP to nginx's pid).

- `/bench/ceiling`: nginx serves the first page's exact bytes as a static file;
- `/bench/floor`: the same proxy settings as every instance location (conf/nginx-proxy.conf.in)
  to an upstream of bare Tornado processes (floor.py), where the target puts them (one per
  core on loopback; in the lab, on the app hosts).
Both are removed, and nginx reloaded again, when the benchmark ends.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from scripts.benchmark.target import FloorSpot, Target
from scripts.stack.config import StackConfig, StackError, proxy_locations

CEILING, FLOOR = "/bench/ceiling", "/bench/floor"
CONF_NAME = "todo-bench.conf"
RELOAD_TIMEOUT = 15.0


class Hooks:
    def __init__(self, target: Target, body: bytes) -> None:
        self.target = target
        self.cfg = cfg = target.cfg
        self.dir = cfg.path("bench")
        # nginx's workers run unprivileged: the var dir may be closed to them (a pytest tmp dir
        # is 0700), so the static file lives in a directory of its own that they can read.
        self.static_dir = Path(tempfile.mkdtemp(prefix="todo-bench-static-"))
        self.static_dir.chmod(0o755)
        self.body_file = self.static_dir / "first-page.json"
        self.http_conf = cfg.path("nginx.d", "http", CONF_NAME)
        self.server_conf = cfg.path("nginx.d", "server", CONF_NAME)
        self.body = body
        self.floors: list[subprocess.Popen[bytes]] = []

    def supported(self) -> bool:
        """False for a stack whose nginx.conf predates the nginx.d includes."""
        conf = self.cfg.path("run", "nginx.conf")
        return conf.exists() and "nginx.d/server/" in conf.read_text()

    def install(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.body_file.write_bytes(self.body)
        self.body_file.chmod(0o644)
        spots = self.target.floor_spots()
        for spot in spots:
            self._start_floor(spot)
        for spot in spots:  # started together, waited for together
            wait_for(f"http://{spot.address}:{spot.port}/", present=True)
        self.http_conf.parent.mkdir(parents=True, exist_ok=True)
        self.server_conf.parent.mkdir(parents=True, exist_ok=True)
        self.http_conf.write_text(upstream_conf(spots))
        self.server_conf.write_text(locations_conf(self.cfg, self.body_file, len(spots)))
        try:
            self.target.check_nginx()
        except StackError:
            self._remove_files()
            raise
        reload_nginx(self.cfg)
        for path in (CEILING, FLOOR):
            wait_for(self.target.base_url + path, present=True)

    def remove(self) -> None:
        """Undo install: files gone, nginx reloaded, floor processes stopped (by PID)."""
        had_conf = self.server_conf.exists()
        self._remove_files()
        if had_conf:
            reload_nginx(self.cfg)
            wait_for(self.target.base_url + CEILING, present=False)
        for process in self.floors:
            process.terminate()
        for process in self.floors:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
        self.floors = []

    def _remove_files(self) -> None:
        for path in (self.server_conf, self.http_conf):
            path.unlink(missing_ok=True)
        shutil.rmtree(self.static_dir, ignore_errors=True)

    def _start_floor(self, spot: FloorSpot) -> None:
        log_file = self.dir / f"floor-{spot.address}-{spot.port}.log"
        with log_file.open("wb") as log:  # the child keeps its copy
            # `ip netns exec` execs the command: the pid is the floor's own.
            self.floors.append(subprocess.Popen(
                [*spot.prefix, sys.executable, "-m", "scripts.benchmark.floor",
                 "--address", spot.address, "--port", str(spot.port),
                 "--body-file", str(self.body_file)], stdout=log, stderr=subprocess.STDOUT,
            ))

    def floor_pids(self) -> list[int]:
        return [process.pid for process in self.floors]


def upstream_conf(spots: list[FloorSpot]) -> str:
    servers = "\n".join(f"    server {spot.address}:{spot.port};" for spot in spots)
    # As upstream todo_instances in conf/nginx.conf.in.
    return (f"# Written by scripts/bench; removed when it ends.\nupstream bench_floor {{\n"
            f"{servers}\n    keepalive 128;\n    keepalive_requests 100000;\n"
            f"    keepalive_timeout 60s;\n}}\n")


def locations_conf(cfg: StackConfig, body_file: Path, floors: int) -> str:
    """As nginx_conf() (scripts/stack/config.py) renders the instances' locations."""
    proxy = proxy_locations(cfg, upstreams=floors)
    if "proxy_pass http://todo_instances;" not in proxy:
        raise StackError("conf/nginx-proxy.conf.in no longer proxies to todo_instances")
    proxy = proxy.replace("proxy_pass http://todo_instances;", "proxy_pass http://bench_floor;")
    return (f"# Written by scripts/bench; removed when it ends.\n"
            f"location = {CEILING} {{\n    default_type application/json;\n"
            f"    alias {body_file};\n}}\n"
            f"location = {FLOOR} {{\n{proxy}}}\n")


def reload_nginx(cfg: StackConfig) -> None:
    """A graceful reload: new workers take the new config, old ones finish what they serve."""
    try:
        pid = int(cfg.path("run", "nginx.pid").read_text().strip())
    except (FileNotFoundError, ValueError):
        raise StackError(f"no nginx pid in {cfg.path('run', 'nginx.pid')}") from None
    os.kill(pid, signal.SIGHUP)


def wait_for(url: str, *, present: bool, timeout: float = RELOAD_TIMEOUT) -> None:
    """Until `url` answers 200 (present) or no longer does."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                ok = response.status == 200
        except (urllib.error.URLError, OSError):
            ok = False
        if ok == present:
            # Old workers may still hold keep-alive connections; new ones get the new config.
            time.sleep(0.5)
            return
        time.sleep(0.1)
    raise StackError(f"{url} did not {'appear' if present else 'go away'} within {timeout:.0f}s")
