"""The benchmark of issue 9: every row against the physical ceiling, in one table.

    todo-bench [--var var] [--todos 10000] [--runs 3] [--duration 5] [--connections 100,1000]
               [--sizes 10000,100000,1000000] [--soak SECONDS] [--output FILE] [--note TEXT]
    todo-bench --up [--var var-bench] [--http-port 18000] [--base-port 18001] ...

Runs against the running stack (its saved config in <var>/stack.json), or with --up brings one
up in its own var dir on benchmark ports and stops it afterwards. Bounded: every wrk run lasts
--duration seconds; loopback only; what it starts it stops by PID. The lab runs the same
benchmark from its client host (`scripts/lab bench`, scripts/netlab/bench.py): `benchmark()`
takes a Target (target.py), not a stack on loopback.
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import sys
import time
from pathlib import Path

from scripts.benchmark import report, rss, soak, wrk
from scripts.benchmark.api import Api
from scripts.benchmark.edge import Edge
from scripts.benchmark.hooks import Hooks
from scripts.benchmark.pages import PASSWORD, UserPages, prepare
from scripts.benchmark.plan import FIRST_PAGE, Runner, main_rows, size_rows
from scripts.benchmark.target import Target
from scripts.benchmark.writemix import WRITER, WriteCheck, WriteMix
from scripts.stack import commands
from scripts.stack.config import DEFAULT_VAR, StackConfig, StackError
from scripts.stack.supervisor import Supervisor
from server.infra.settings import PROJECT_ROOT

BENCH_VAR = PROJECT_ROOT / "var-bench"
DEFAULT_OUTPUT = PROJECT_ROOT / "docs" / "benchmarks" / "latest.md"


def _counts(text: str) -> list[int]:
    values = [int(part) for part in text.split(",") if part.strip()]
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def parser(prog: str = "todo-bench", *, stack_options: bool = True,
           output: Path = DEFAULT_OUTPUT) -> argparse.ArgumentParser:
    """todo-bench's options; without `stack_options` only those of the measurement (the lab's
    stack is the lab's own)."""
    p = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n")[0])
    if stack_options:
        p.add_argument("--var", type=Path, help=f"the stack's directory (default "
                       f"{DEFAULT_VAR}; with --up {BENCH_VAR})")
        p.add_argument("--up", action="store_true",
                       help="bring a stack up in --var on the ports below, and down afterwards")
        p.add_argument("--keep-up", action="store_true", help="with --up: leave it running")
        p.add_argument("--instances", type=int, default=os.cpu_count() or 1,
                       help="with --up (default: one per core)")
        for name, default in (("http-port", 18000), ("https-port", 18443),
                              ("base-port", 18001), ("mongo-port", 18017),
                              ("redis-port", 18379), ("broker-port", 18380)):
            p.add_argument(f"--{name}", type=int, default=default,
                           help=f"with --up (default {default})")
    p.add_argument("--todos", type=int, default=10_000, help="the read user's todos")
    p.add_argument("--runs", type=int, default=3, help="rounds; the table shows medians")
    p.add_argument("--duration", type=float, default=5.0, help="seconds per wrk run")
    p.add_argument("--connections", type=_counts, default=[100, 1000])
    p.add_argument("--sizes", type=_counts, default=[],
                   help="a second table: first, cursor and offset page at these sizes "
                        "(at the first --connections)")
    p.add_argument("--soak", type=float, default=0.0, metavar="SECONDS",
                   help="then the first page at 60%% of its max rate, sampling RSS")
    p.add_argument("--soak-edge", choices=("on", "off"), default="off",
                   help="the soak's first page with the edge on or off (default off: the "
                        "instances serve it)")
    p.add_argument("--only", action="append", default=[], metavar="TEXT",
                   help="only the table's rows whose name contains TEXT (repeatable), e.g. "
                        "--only floor --only 'edge on'")
    p.add_argument("--output", type=Path, default=output)
    p.add_argument("--note", default="", help="a line for the results file (e.g. smoke run)")
    p.add_argument("--raw", action="store_true", help="also print wrk's own output")
    return p


def stack_for(args: argparse.Namespace) -> tuple[StackConfig, bool]:
    """The stack, and whether this run started it (then it stops it too)."""
    if not args.up:
        return StackConfig.load((args.var or DEFAULT_VAR).resolve()), False
    cfg = StackConfig(
        var=str((args.var or BENCH_VAR).resolve()), instances=args.instances,
        http_port=args.http_port,
        https_port=args.https_port, base_port=args.base_port, mongo_port=args.mongo_port,
        redis_port=args.redis_port, broker_port=args.broker_port, db_name="todo_bench",
    )
    if Supervisor(cfg).pid() is not None:
        return StackConfig.load(cfg.root), False  # already up: used, and left running
    commands.up(cfg)
    return cfg, True


def parse(p: argparse.ArgumentParser, argv: list[str], command: str) -> argparse.Namespace:
    """The options, checked; `args.command` is the command line for the results file."""
    args = p.parse_args(argv)
    args.command = f"{command} {shlex.join(argv)}".strip()
    if args.runs < 1 or args.duration <= 0 or args.todos < 1:
        p.error("--runs, --duration and --todos must be positive")
    return args


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = parse(parser(), argv, "scripts/bench")
    try:
        wrk.check_available()
        wrk.raise_open_files_limit()
        cfg, started = stack_for(args)
        try:
            text, ok = benchmark(Target(cfg), args)
        finally:
            if started and not args.keep_up:
                commands.down(cfg)
    except StackError as exc:
        sys.exit(f"todo-bench: {exc}")
    write(args, text, ok)


def write(args: argparse.Namespace, text: str, ok: bool) -> None:
    """The results printed and written to --output; a failed write mix check fails the run."""
    print(text)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text + "\n")
    print(f"\nwritten to {args.output}", file=sys.stderr)
    if not ok:
        sys.exit("todo-bench: the write mix lost or duplicated a write (see the table)")


def benchmark(target: Target, args: argparse.Namespace) -> tuple[str, bool]:
    """The results document, and whether the write mix check passed."""
    cfg = target.cfg
    if target.client_address not in cfg.rate_limit_exempt:
        print(f"warning: {target.client_address} is rate limited by this stack's nginx: "
              "expect 429s", file=sys.stderr)
    api = Api(target.base_url)
    try:
        pages = prepare(cfg, api, args.todos)
        writer = api.token(WRITER, PASSWORD)
        sized = [prepare(cfg, api, size) for size in args.sizes]
    finally:
        api.close()
    edge = Edge(target)
    hooks = Hooks(target, pages.first_page)
    runner = Runner(target.base_url, args.duration, edge, WriteMix(cfg, writer), args.raw)
    results, sizes = report.Results(), report.Results()
    try:
        if hooks.supported():
            hooks.install()
        else:
            print("this stack's nginx.conf has no nginx.d include (re-run todo-stack up): "
                  "no ceiling and floor rows", file=sys.stderr)
        before = rss.sample(target)
        rows = [row for row in main_rows(pages, edge=edge.available, hooks=bool(hooks.floors))
                if not args.only or any(text in row.name for text in args.only)]
        if not rows:
            raise StackError(f"no row of the table matches --only {args.only}")
        runner.rounds(rows, args.connections, args.runs, results, pages.token)
        after_rows = rss.sample(target)
        for user in sized:
            runner.rounds(size_rows(user), args.connections[:1], args.runs, sizes, user.token)
        soaked = run_soak(target, args, pages, results, edge) if args.soak else None
        at_end = rss.sample(target)
    finally:
        hooks.remove()
        edge.restore()
    check = runner.write_mix.check() if runner.write_mix and runner.write_mix.runs else None
    text = document(target, args, pages, results, [before, after_rows, at_end], check, sizes,
                    soaked)
    return text, check is None or check.ok


def run_soak(target: Target, args: argparse.Namespace, pages: UserPages,
             results: report.Results, edge: Edge) -> soak.Soak:
    """The first page as the instances serve it (edge off, when there is an edge): their memory
    is what the soak watches, and with the edge on they would see little of the load."""
    lowest = args.connections[0]
    wanted = f"edge {args.soak_edge}"
    rows = [name for name, c in results.runs if c == lowest and name.startswith(FIRST_PAGE)]
    if not rows:
        raise StackError("--soak needs the first page's rows (see --only)")
    row = next((name for name in rows if wanted in name), rows[0])
    if wanted in row:
        edge.switch(args.soak_edge)
    print(f"soak: {row}, {args.soak:g} s", file=sys.stderr, flush=True)
    runs = results.runs[(row, lowest)]
    rate = results.median_rate(row, lowest) or 0.0
    p50 = sorted(r.p50_ms for r in runs)[len(runs) // 2]
    return soak.run(target, pages.token, args.soak, rate, p50)


def document(target: Target, args: argparse.Namespace, pages: UserPages,
             results: report.Results, memory: list[dict[str, float | None]],
             check: WriteCheck | None, sizes: report.Results, soaked: soak.Soak | None) -> str:
    command = args.command
    parts = [
        f"# {target.title}", "",
        *([f"**{args.note}**", ""] if args.note else []),
        f"`{command}` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
        f"{os.cpu_count()} cores ({platform.machine()}, {platform.system()} "
        f"{platform.release()}); {target.describe()}; wrk -t{wrk.THREADS} "
        f"-d{args.duration:g}s --latency (default 2 s timeout), {args.runs} round(s), rows "
        f"alternating within each round; user with {pages.todos:,} todos, first page "
        f"{len(pages.first_page):,} bytes.", "",
        report.main_table(results), "",
        report.cursor_cost(results, pages.deep_page), "",
        check.summary() if check is not None else "", "",
        "Resident memory of every instance: before the first row, after the last row of this "
        "table, and at the end (after the size table and the soak, if any):", "",
        report.rss_table(*memory),
    ]
    if args.sizes:
        parts += ["", f"## Cost by list size (-c {args.connections[0]}; the deep cursor page is "
                  "page 500, or the last one of a shorter list)", "",
                  report.sizes_table(sizes, args.sizes,
                                     ["first page", "deep cursor page", "offset ?start=5000"],
                                     args.connections[0])]
    if soaked is not None:
        parts += ["", f"## Soak ({args.soak:g} s)", "", soaked.table()]
    return "\n".join(parts)


if __name__ == "__main__":
    main()
