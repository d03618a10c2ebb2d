"""One `wrk --latency` run and the numbers the table needs from it."""

from __future__ import annotations

import re
import resource
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from scripts.stack.config import StackError

THREADS = 2
# Beyond its duration a run may take this long (connecting 1000 sockets, the Lua done()).
SLACK_SECONDS = 60
UNIT_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


@dataclass(frozen=True)
class WrkResult:
    requests_per_second: float
    answered: int  # responses that arrived (wrk counts nothing still open at the end)
    p50_ms: float
    p99_ms: float
    connect: int
    read: int
    write: int
    timeout: int
    non_2xx: int
    output: str

    @property
    def socket_errors(self) -> int:
        return self.connect + self.read + self.write + self.timeout


def to_ms(value: str) -> float:
    """wrk's `1.23ms` / `850.00us` / `1.05s` / `1.00m` in milliseconds."""
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", value)
    if match is None:
        raise StackError(f"wrk printed a latency it never prints: {value!r}")
    return float(match.group(1)) * UNIT_MS[match.group(2)]


def parse(output: str) -> WrkResult:
    def number(pattern: str) -> str:
        match = re.search(pattern, output)
        return match.group(1) if match else "0"

    errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    connect, read, write, timeout = (int(n) for n in errors.groups()) if errors else (0, 0, 0, 0)
    p50 = re.search(r"\n\s+50%\s+(\S+)", output)
    p99 = re.search(r"\n\s+99%\s+(\S+)", output)
    return WrkResult(
        requests_per_second=float(number(r"Requests/sec:\s+([\d.]+)")),
        answered=int(number(r"(\d+) requests in ")),
        p50_ms=to_ms(p50.group(1)) if p50 else float("nan"),
        p99_ms=to_ms(p99.group(1)) if p99 else float("nan"),
        connect=connect, read=read, write=write, timeout=timeout,
        non_2xx=int(number(r"Non-2xx or 3xx responses: (\d+)")),
        output=output,
    )


def command(
    url: str, *, connections: int, duration: float, token: str | None = None,
    script: Path | None = None,
) -> list[str]:
    """wrk with its default 2 s timeout: a slower answer is a socket error (timeout)."""
    args = ["wrk", f"-t{THREADS}", f"-c{max(connections, THREADS)}", f"-d{duration:g}s",
            "--latency"]
    if token:
        args += ["-H", f"Authorization: Bearer {token}"]
    if script:
        args += ["-s", str(script)]
    return [*args, url]


def run(
    url: str, *, connections: int, duration: float, token: str | None = None,
    script: Path | None = None, env: dict[str, str] | None = None,
) -> WrkResult:
    result = subprocess.run(
        command(url, connections=connections, duration=duration, token=token, script=script),
        capture_output=True, text=True, timeout=duration + SLACK_SECONDS, check=False, env=env,
    )
    if result.returncode != 0:
        raise StackError(f"wrk failed on {url}: {result.stderr.strip() or result.stdout.strip()}")
    return parse(result.stdout)


def check_available() -> None:
    if shutil.which("wrk") is None:
        raise StackError("no wrk: apt-get install -y wrk")


def raise_open_files_limit() -> None:
    """1000 connections need as many descriptors, in wrk (a child: it inherits the limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
