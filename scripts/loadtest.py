"""The classic load test against the running stack, printed as one table.

    todo-loadtest [--var var] [--duration 5s] [--connections 100,1000] [--count 10000]

Seeds a user with --count todos (batched), logs in, then runs `wrk -t2 -d5s --latency` with
that user's bearer token through nginx on the first page, on `?start=5000` (offset paging) and
on a deep cursor page, once per connection count. Bounded: each run lasts --duration.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import resource
import shutil
import subprocess
import sys
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from scripts.seed import seed
from scripts.stack.config import DEFAULT_VAR, StackConfig, StackError
from server.domain.users import user_id_by_name
from server.infra.settings import Settings
from server.web.services import mongo_client

# A request slower than this counts as a socket error (timeout) in the table.
WRK_TIMEOUT = "10s"
LOAD_USER = "loadtest"
LOAD_PASSWORD = "load test password"  # noqa: S105 - a throwaway local account


@dataclass
class Row:
    name: str
    connections: int
    requests_per_second: float
    p50: str
    p99: str
    socket_errors: int
    non_2xx: int


def parse_wrk(name: str, connections: int, output: str) -> Row:
    """The numbers of one `wrk --latency` run."""
    def find(pattern: str, default: str = "0") -> str:
        match = re.search(pattern, output)
        return match.group(1) if match else default

    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)",
                       output)
    return Row(
        name=name,
        connections=connections,
        requests_per_second=float(find(r"Requests/sec:\s+([\d.]+)")),
        p50=find(r"\n\s+50%\s+(\S+)", "?"),
        p99=find(r"\n\s+99%\s+(\S+)", "?"),
        socket_errors=sum(int(n) for n in errors.groups()) if errors else 0,
        non_2xx=int(find(r"Non-2xx or 3xx responses: (\d+)")),
    )


def table(rows: list[Row]) -> str:
    header = f"{'target':<28} {'conns':>5} {'req/s':>10} {'p50':>9} {'p99':>9} {'sock err':>8} " \
             f"{'non-2xx':>8}"
    lines = [header, "-" * len(header)]
    lines += [
        f"{row.name:<28} {row.connections:>5} {row.requests_per_second:>10.0f} {row.p50:>9} "
        f"{row.p99:>9} {row.socket_errors:>8} {row.non_2xx:>8}"
        for row in rows
    ]
    return "\n".join(lines)


def _post_json(url: str, body: dict[str, str]) -> dict[str, str]:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        result: dict[str, str] = json.loads(response.read())
        return result


def _get_json(url: str, token: str) -> dict[str, object]:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=30) as response:
        result: dict[str, object] = json.loads(response.read())
        return result


async def _seed_up_to(settings: Settings, count: int) -> None:
    """Give the load test user at least `count` todos (a second run seeds nothing)."""
    client = mongo_client(settings)
    try:
        db = client[settings.db_name]
        owner = await user_id_by_name(db, LOAD_USER)
        have = 0 if owner is None else await db["todos"].count_documents({"owner": owner})
    finally:
        await client.close()
    if have < count:
        await seed(settings, username=LOAD_USER, password=LOAD_PASSWORD, count=count - have,
                   batch=1000)


def _raise_open_files_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def run_wrk(url: str, token: str, connections: int, duration: str) -> str:
    command = ["wrk", "-t2", f"-c{connections}", f"-d{duration}", "--latency",
               "--timeout", WRK_TIMEOUT,
               "-H", f"Authorization: Bearer {token}", url]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    if result.returncode != 0:
        raise StackError(f"wrk failed: {result.stderr.strip() or result.stdout.strip()}")
    return result.stdout


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="todo-loadtest", description=__doc__.split("\n")[0])
    parser.add_argument("--var", type=Path, default=DEFAULT_VAR)
    parser.add_argument("--duration", default="5s")
    parser.add_argument("--connections", default="100,1000")
    parser.add_argument("--count", type=int, default=10_000)
    parser.add_argument("--raw", action="store_true", help="also print wrk's own output")
    args = parser.parse_args(argv)
    try:
        if shutil.which("wrk") is None:
            raise StackError("no wrk: apt-get install -y wrk")
        cfg = StackConfig.load(args.var.resolve())
        settings = Settings(mongo_uri=cfg.mongo_uri, db_name=cfg.db_name)
        print(f"seeding {LOAD_USER} up to {args.count} todos ...", file=sys.stderr)
        asyncio.run(_seed_up_to(settings, args.count))
        token = _post_json(f"{cfg.base_url}/tokens",
                           {"username": LOAD_USER, "password": LOAD_PASSWORD})["token"]
        deep_start = max(0, args.count - 20)
        deep = _get_json(f"{cfg.base_url}/todo?start={deep_start}&limit=10", token)["next"]
        deep_cursor = urllib.parse.urlsplit(str(deep)).query
        targets = [
            ("first page /todo", f"{cfg.base_url}/todo"),
            ("offset /todo?start=5000", f"{cfg.base_url}/todo?start=5000"),
            (f"deep cursor (~{deep_start + 10})", f"{cfg.base_url}/todo?{deep_cursor}"),
        ]
        _raise_open_files_limit()
        rows = []
        for connections in [int(c) for c in args.connections.split(",")]:
            for name, url in targets:
                output = run_wrk(url, token, connections, args.duration)
                if args.raw:
                    print(output, file=sys.stderr)
                rows.append(parse_wrk(name, connections, output))
    except (StackError, OSError) as exc:
        sys.exit(f"todo-loadtest: {exc}")
    print(table(rows))


if __name__ == "__main__":
    main()
