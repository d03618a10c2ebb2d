"""The resident memory of every instance of the target (pids from each host's supervisorctl)."""

from __future__ import annotations

from scripts.benchmark.target import Target
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


def sample(target: Target) -> dict[str, float | None]:
    """Instance ("todo_<port>", or "<host> todo_<port>" in the lab) -> its RSS in MB."""
    return {f"{host} {name}".strip(): rss_mb(pid)
            for host, cfg in target.instance_stacks().items()
            for name, pid in instance_pids(cfg).items()}
