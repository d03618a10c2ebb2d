"""The resident memory of every instance of the stack (pids from supervisorctl)."""

from __future__ import annotations

from scripts.stack.config import StackConfig
from scripts.stack.supervisor import Supervisor


def instance_pids(cfg: StackConfig) -> dict[str, int]:
    """Program name (todo_<port>) -> pid, for the instances that run."""
    supervisor = Supervisor(cfg)
    pids = {}
    for port in cfg.ports:
        name = f"todo_{port}"
        word = supervisor.ctl("pid", f"todo:{name}", check=False).strip()
        if word.isdigit() and word != "0":
            pids[name] = int(word)
    return pids


def rss_mb(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def sample(cfg: StackConfig) -> dict[str, float | None]:
    return {name: rss_mb(pid) for name, pid in instance_pids(cfg).items()}
