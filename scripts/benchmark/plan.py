"""The rows and their rounds: each round runs every row once per concurrency, one after the
other, so whatever drifts on the machine (other processes, caches, thermal) touches every row
alike; the table takes medians over the rounds."""

from __future__ import annotations

import sys
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass

from scripts.benchmark import wrk
from scripts.benchmark.edge import Edge
from scripts.benchmark.hooks import CEILING, FLOOR
from scripts.benchmark.pages import OFFSET_STARTS, UserPages
from scripts.benchmark.report import CEILING_ROW, FLOOR_ROW, Results
from scripts.benchmark.writemix import WriteMix

WRITE_MIX_ROW = "write mix: 40% create / 20% finish / 40% read"
FIRST_PAGE = "first page GET /todo"
# Idle again: this many /readyz answers in a row, each quicker than this; waited for at most
# SETTLE_SECONDS.
SETTLE_QUICK_ANSWERS = 3
SETTLE_QUICK_SECONDS = 0.05
SETTLE_SECONDS = 30.0


@dataclass(frozen=True)
class Row:
    name: str
    path: str  # through the stack's nginx; unused by the write mix
    edge: str | None = None  # "on" / "off": the edge state the row measures
    write_mix: bool = False


def main_rows(pages: UserPages, *, edge: bool, hooks: bool) -> list[Row]:
    """Edge-off rows first: a round switches the edge off, then on, once per concurrency."""
    rows = []
    if edge:
        rows.append(Row(f"{FIRST_PAGE}, edge off", "/todo", edge="off"))
    if hooks:
        rows += [Row(CEILING_ROW, CEILING), Row(FLOOR_ROW, FLOOR)]
    rows.append(Row(f"{FIRST_PAGE}, edge on", "/todo", edge="on") if edge
                else Row(f"{FIRST_PAGE} (edge n/a)", "/todo"))
    rows += [Row(f"offset ?start={start}", f"/todo?start={start}") for start in OFFSET_STARTS]
    rows += [Row("cursor page 2", pages.cursor_page_2),
             Row(f"cursor page {pages.deep_page}", pages.deep_cursor),
             Row(WRITE_MIX_ROW, "/todo", write_mix=True)]
    return rows


def size_rows(pages: UserPages) -> list[Row]:
    return [Row(f"first page @{pages.todos}", "/todo"),
            Row(f"deep cursor page @{pages.todos}", pages.deep_cursor),
            Row(f"offset ?start=5000 @{pages.todos}", "/todo?start=5000")]


@dataclass
class Runner:
    base_url: str
    duration: float
    edge: Edge
    write_mix: WriteMix | None = None
    raw: bool = False

    def rounds(
        self, rows: Sequence[Row], connections: Sequence[int], runs: int, results: Results,
        token: str,
    ) -> None:
        total = runs * len(connections) * len(rows)
        done = 0
        for round_no in range(1, runs + 1):
            for count in connections:
                for row in rows:
                    done += 1
                    print(f"[{done}/{total}] round {round_no}: {row.name} -c {count}",
                          file=sys.stderr, flush=True)
                    results.add(row.name, count, self.one(row, count, token))

    def one(self, row: Row, connections: int, token: str) -> wrk.WrkResult:
        if row.edge is not None:
            self.edge.switch(row.edge)
        if row.write_mix and self.write_mix is not None:
            result = self.write_mix.run(connections, self.duration)
        else:
            result = wrk.run(self.base_url + row.path, connections=connections,
                             duration=self.duration, token=token)
        if self.raw:
            print(result.output, file=sys.stderr)
        self.settle()
        return result

    def settle(self) -> None:
        """Until the instances are idle again: after a run at 1000 connections they still
        work through requests wrk gave up on, which the next row must not pay for."""
        deadline = time.monotonic() + SETTLE_SECONDS
        quick = 0
        while quick < SETTLE_QUICK_ANSWERS and time.monotonic() < deadline:
            started = time.monotonic()
            try:
                with urllib.request.urlopen(f"{self.base_url}/readyz", timeout=5) as response:
                    response.read()
            except OSError:
                quick = 0
                time.sleep(0.1)
                continue
            quick = quick + 1 if time.monotonic() - started < SETTLE_QUICK_SECONDS else 0
