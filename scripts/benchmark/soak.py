"""A bounded soak: the first page at ~60% of its measured maximum rate for SECONDS, every
instance's RSS sampled every 10 s, first third against last third."""

from __future__ import annotations

import os
import statistics
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from scripts.benchmark import rss, wrk
from scripts.benchmark.target import Target
from scripts.stack.config import StackError

SCRIPT = Path(__file__).with_name("soak.lua")
SAMPLE_SECONDS = 10.0
DELAY_MS = 10
SHARE = 0.6
MAX_SOAK_SECONDS = 3600


@dataclass
class Soak:
    target_rate: float
    connections: int
    result: wrk.WrkResult | None = None
    samples: list[dict[str, float | None]] = field(default_factory=list)

    def table(self) -> str:
        achieved = f"{self.result.requests_per_second:,.0f}" if self.result else "n/a"
        errors = (f"{self.result.socket_errors} socket errors, {self.result.non_2xx} non-2xx"
                  if self.result else "")
        lines = [f"Target {self.target_rate:,.0f} req/s ({SHARE:.0%} of the first page's "
                 f"median at the lowest concurrency), {self.connections} connections each "
                 f"waiting {DELAY_MS} ms: achieved {achieved} req/s; {errors}; "
                 f"{len(self.samples)} RSS samples.", "",
                 "| instance | RSS first third (MB) | RSS last third (MB) | growth (MB) |",
                 "|---|---:|---:|---:|"]
        third = max(1, len(self.samples) // 3)
        names = sorted({name for sample in self.samples for name in sample})
        for name in names:
            first = _mean([s.get(name) for s in self.samples[:third]])
            last = _mean([s.get(name) for s in self.samples[-third:]])
            growth = f"{last - first:+.1f}" if first is not None and last is not None else "n/a"
            lines.append(f"| {name} | {_fmt(first)} | {_fmt(last)} | {growth} |")
        return "\n".join(lines)


def _mean(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.mean(known) if known else None


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f}"


def run(target: Target, token: str, seconds: float, max_rate: float, p50_ms: float) -> Soak:
    if not 0 < seconds <= MAX_SOAK_SECONDS:
        raise StackError(f"--soak must be 1..{MAX_SOAK_SECONDS} seconds")
    rate = SHARE * max_rate
    # Each connection makes one request per (delay + latency).
    connections = max(2, min(1000, round(rate * (DELAY_MS + p50_ms) / 1000)))
    soak = Soak(target_rate=rate, connections=connections)
    command = wrk.command(f"{target.base_url}/todo", connections=connections, duration=seconds,
                          token=token, script=SCRIPT)
    env = {**os.environ, "BENCH_DELAY_MS": str(DELAY_MS)}
    deadline = time.monotonic() + seconds + wrk.SLACK_SECONDS
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          env=env) as process:
        while process.poll() is None:
            if time.monotonic() > deadline:
                process.kill()
                raise StackError("wrk of the soak did not end in time")
            soak.samples.append(rss.sample(target))
            end = time.monotonic() + SAMPLE_SECONDS
            while process.poll() is None and time.monotonic() < end:
                time.sleep(0.2)
        output, errors = process.communicate()
    if process.returncode != 0:
        raise StackError(f"wrk of the soak failed: {errors.strip() or output.strip()}")
    soak.result = wrk.parse(output)
    return soak
