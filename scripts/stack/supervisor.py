"""supervisord as the stack drives it: started on the generated config, asked through
supervisorctl, and nginx reloaded on a new upstream list (rolling restart).
"""

from __future__ import annotations

import subprocess
import sys
import time

from scripts.local_services import alive
from scripts.stack.config import StackConfig, StackError, find_nginx, nginx_conf

RELOAD_GRACE_SECONDS = 1.0


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
