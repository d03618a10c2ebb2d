"""The framework's floor: a bare Tornado handler answering every GET with the first page's bytes
from memory, on uvloop and with the HTTPServer options of the real instances (server/web/main.py).

    python -m scripts.benchmark.floor [--address 127.0.0.1] --port 18101 --body-file FILE

scripts/bench starts one per core behind the stack's nginx (in the lab: one per instance, on
the app hosts, behind the edge host's nginx) and stops them by PID.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from pathlib import Path

import uvloop
from tornado.httpserver import HTTPServer
from tornado.web import Application, RequestHandler


class PageHandler(RequestHandler):
    def initialize(self, body: bytes) -> None:
        self.body = body

    def get(self) -> None:
        self.set_header("Content-Type", "application/json; charset=UTF-8")
        self.write(self.body)


async def serve(address: str, port: int, body: bytes) -> None:
    app = Application([(r"/.*", PageHandler, {"body": body})])
    server = HTTPServer(app, xheaders=True, idle_connection_timeout=75, body_timeout=30)
    # The instances' backlog (server/web/main.py): with Tornado's default of 128, nginx's
    # connections at -c 1000 overflowed it, timed out connecting and answered 504s.
    server.listen(port, address, backlog=1024)
    stopped = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopped.set)
    await stopped.wait()
    server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--address", default="127.0.0.1", help="the address to bind")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--body-file", type=Path, required=True)
    args = parser.parse_args()
    uvloop.run(serve(args.address, args.port, args.body_file.read_bytes()))


if __name__ == "__main__":
    main()
