"""The benchmark's tables, in markdown: medians and ranges over the runs, ratios to the
ceiling and to the framework floor at the same concurrency."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field

from scripts.benchmark.wrk import WrkResult

CEILING_ROW = "ceiling: nginx static file"
FLOOR_ROW = "floor: bare Tornado behind nginx"


@dataclass
class Results:
    """Every run of every (row, connections), in the order rows were first measured."""

    runs: dict[tuple[str, int], list[WrkResult]] = field(default_factory=dict)

    def add(self, row: str, connections: int, result: WrkResult) -> None:
        self.runs.setdefault((row, connections), []).append(result)

    def median_rate(self, row: str, connections: int) -> float | None:
        found = self.runs.get((row, connections))
        return statistics.median(r.requests_per_second for r in found) if found else None


def _ratio(rate: float, reference: float | None) -> str:
    if not reference:
        return "n/a"
    share = rate / reference
    return f"{share:.1%}" if share < 10 else f"{share:.0f}x"


def _ms(value: float) -> str:
    return f"{value:,.1f}" if value < 100 else f"{value:,.0f}"


def main_table(results: Results) -> str:
    lines = [
        "| row | conns | req/s (median) | req/s range | p50 ms | p99 ms | answered "
        "| socket errors c/r/w/t | non-2xx | vs ceiling | vs floor |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    by_connections = sorted({c for _, c in results.runs})
    for connections in by_connections:
        ceiling = results.median_rate(CEILING_ROW, connections)
        floor = results.median_rate(FLOOR_ROW, connections)
        for (row, c), runs in results.runs.items():
            if c != connections:
                continue
            rates = [r.requests_per_second for r in runs]
            rate = statistics.median(rates)
            errors = "/".join(str(sum(getattr(r, kind) for r in runs))
                              for kind in ("connect", "read", "write", "timeout"))
            lines.append(
                f"| {row} | {c} | {rate:,.0f} | {min(rates):,.0f} to {max(rates):,.0f} "
                f"| {_ms(statistics.median(r.p50_ms for r in runs))} "
                f"| {_ms(statistics.median(r.p99_ms for r in runs))} "
                f"| {sum(r.answered for r in runs):,} | {errors} "
                f"| {sum(r.non_2xx for r in runs)} | {_ratio(rate, ceiling)} "
                f"| {_ratio(rate, floor)} |"
            )
    lines.append("")
    lines.append("answered: responses that arrived, summed over the rounds. wrk counts only those: "
                 "a request still open when a run ends is in no column, so a row with fewer "
                 "answers than connections did not finish, whatever its error columns say.")
    return "\n".join(lines)


def rss_table(before: dict[str, float | None], after_rows: dict[str, float | None],
              at_end: dict[str, float | None]) -> str:
    lines = ["| instance | RSS before (MB) | after the rows (MB) | at the end (MB) |",
             "|---|---:|---:|---:|"]
    for name in sorted(set(before) | set(after_rows) | set(at_end)):
        lines.append(f"| {name} | {_mb(before.get(name))} | {_mb(after_rows.get(name))} "
                     f"| {_mb(at_end.get(name))} |")
    return "\n".join(lines)


def _mb(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f}"


def sizes_table(results: Results, sizes: Sequence[int], rows: Sequence[str],
                connections: int) -> str:
    """One line per size; for each kind of page its median req/s and p99."""
    header = "| todos | " + " | ".join(f"{row} req/s | p99 ms" for row in rows) + " |"
    lines = [header, "|---:|" + "---:|---:|" * len(rows)]
    for size in sizes:
        cells = []
        for row in rows:
            runs = results.runs.get((f"{row} @{size}", connections), [])
            if runs:
                cells += [f"{statistics.median(r.requests_per_second for r in runs):,.0f}",
                          _ms(statistics.median(r.p99_ms for r in runs))]
            else:
                cells += ["n/a", "n/a"]
        lines.append(f"| {size:,} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def cursor_cost(results: Results, deep_page: int) -> str:
    """Issue 9 wants a deep cursor page to cost at most 1.3 times the first cursor page."""
    lines = []
    for (row, connections) in results.runs:
        if row != "cursor page 2":
            continue
        near = results.median_rate(row, connections)
        deep = results.median_rate(f"cursor page {deep_page}", connections)
        if near and deep:
            lines.append(f"cursor page {deep_page} costs {near / deep:.2f}x cursor page 2 "
                         f"at -c {connections} (ratio of their median req/s).")
    return " ".join(lines)
