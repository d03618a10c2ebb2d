"""scripts/bench in a tiny mode against a stack of its own: every row is measured, the static
ceiling answers without a socket error, the write mix loses and duplicates nothing, and the
stack's nginx is left as it was (the benchmark's drop-in config gone, its floor processes
stopped). Speed itself is never asserted here: the numbers are the benchmark's to report."""

from __future__ import annotations

import re
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest

from scripts.benchmark import cli
from scripts.local_services import alive
from scripts.stack import commands
from scripts.stack.config import StackConfig
from tests.conftest import stack_config

EDGE_ROWS = ("first page GET /todo, edge on", "first page GET /todo, edge off")
ROWS = (
    "ceiling: nginx static file", "floor: bare Tornado behind nginx", "offset ?start=10",
    "offset ?start=5000", "cursor page 2", "write mix: 40% create / 20% finish / 40% read",
)


@pytest.fixture(scope="module")
def cfg(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StackConfig]:
    config = stack_config(tmp_path_factory.mktemp("bench") / "var", "todo_bench_test")
    try:
        commands.up(config)
        yield config
    finally:  # an `up` that failed half-way leaves supervisord running
        commands.down(config)


def table_rows(text: str) -> dict[str, dict[str, str]]:
    """The main table's lines by row name, each by column name."""
    rows: dict[str, dict[str, str]] = {}
    header: list[str] = []
    for line in text.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if cells[:2] == ["row", "conns"]:
            header = cells
        elif header and len(cells) == len(header) and cells[1].isdigit():
            rows[cells[0]] = dict(zip(header, cells, strict=True))
        elif header and not line.startswith("|"):
            header = []
    return rows


def test_a_tiny_benchmark_measures_every_row_and_loses_no_write(cfg, tmp_path, capsys,
                                                                monkeypatch):
    floors: list[int] = []
    install = cli.Hooks.install

    def remember_floors(self):
        install(self)
        floors.extend(self.floor_pids())

    monkeypatch.setattr(cli.Hooks, "install", remember_floors)
    output = tmp_path / "latest.md"
    cli.main(["--var", str(cfg.root), "--todos", "300", "--runs", "1", "--duration", "1",
              "--connections", "10", "--output", str(output), "--note", "test run"])

    printed = capsys.readouterr().out
    assert output.read_text().strip() == printed.strip()
    rows = table_rows(printed)
    edge = all(row in rows for row in EDGE_ROWS)
    assert edge or "first page GET /todo (edge n/a)" in rows, rows
    for name in ROWS:
        assert name in rows, (name, printed)
    assert any(re.fullmatch(r"cursor page \d+", name) for name in rows), printed
    ceiling = rows["ceiling: nginx static file"]
    assert ceiling["socket errors c/r/w/t"] == "0/0/0/0", ceiling
    assert ceiling["non-2xx"] == "0", ceiling
    assert int(ceiling["answered"].replace(",", "")) > 0, ceiling
    assert "write mix check OK" in printed, printed
    assert re.search(r"\b(\d+) creates acknowledged \(201\), 0 of them not stored", printed)
    assert "(0 duplicates)" in printed
    for port in cfg.ports:
        assert f"todo_{port}" in printed

    # Nothing of the benchmark is left behind in the stack's nginx, and its processes are gone.
    assert not list(cfg.path("nginx.d").rglob("*.conf"))
    with pytest.raises(urllib.error.HTTPError) as gone:
        urllib.request.urlopen(f"{cfg.base_url}/bench/ceiling", timeout=5)  # noqa: S310
    assert gone.value.code in (401, 404)
    assert floors
    assert not any(alive(pid) for pid in floors)
