"""Entry point of one instance: settings, services, HTTP server, graceful shutdown."""

from __future__ import annotations

import asyncio
import errno
import gc
import logging
import signal
import sys
from collections.abc import Sequence

import uvloop
from tornado.httpserver import HTTPServer

from server.infra import logs
from server.infra.settings import Settings, SettingsError, load_settings
from server.web.app import make_app
from server.web.edge_lease import EdgeLease
from server.web.inflight import InFlight
from server.web.services import open_services

log = logging.getLogger("todo")


class StartupError(Exception):
    """The instance cannot start; the message is one line for the operator."""


def listen(server: HTTPServer, settings: Settings) -> None:
    try:
        server.listen(settings.port, settings.address, backlog=1024)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise StartupError(
                f"port {settings.port} on {settings.address} is already in use"
            ) from None
        raise StartupError(
            f"cannot listen on {settings.address}:{settings.port}: {exc.strerror}"
        ) from None


def freeze_startup_objects() -> None:
    """Keep what start-up allocated (modules, classes, clients: ~60,000 objects) out of the
    garbage collector's full passes, which then scan only what requests allocate. Measured on
    an instance: a full pass took 30 ms (the event loop stands still meanwhile), under 0.1 ms
    with this. Full passes are what free an abandoned read's handler: Tornado re-raises its
    CancelledError inside `except ... as e`, a frame-traceback cycle holding the handler."""
    gc.collect()
    gc.freeze()


# How long notification sockets get to finish their closing handshake on shutdown.
SOCKETS_GRACE = 1.0


async def drain(tracker: InFlight, server: HTTPServer, grace: float) -> None:
    """Let in-flight requests finish (for at most `grace` seconds), then close connections."""
    try:
        await asyncio.wait_for(tracker.idle(), grace)
    except TimeoutError:
        log.warning("shutdown: %d requests still running after %.1fs", tracker.count, grace)
    try:
        await asyncio.wait_for(server.close_all_connections(), 1.0)
    except TimeoutError:
        log.warning("shutdown: connections did not close in time")


async def serve(settings: Settings, stop: asyncio.Event | None = None) -> None:
    """Run one instance until SIGTERM/SIGINT (or `stop` is set)."""
    stop = stop or asyncio.Event()
    services = open_services(settings)
    lease = EdgeLease(name=settings.instance_name, guard=services.redis, cache=services.cache,
                      tokens=services.tokens, redis_url=settings.redis_url,
                      redis_timeout=settings.redis_timeout)
    app = make_app(services)
    freeze_startup_objects()
    server = HTTPServer(
        app, xheaders=settings.xheaders, idle_connection_timeout=75, body_timeout=30
    )
    try:
        listen(server, settings)
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        lease.start()
        log.info("listening on http://%s:%d", settings.address, settings.port)
        await stop.wait()
        log.info("shutting down: no new connections, draining requests")
        server.stop()
        # WebSockets are told 1001 (going away: reconnect to another instance) at once; they
        # are not in-flight requests, and their closing does not hold up the drain.
        await asyncio.gather(
            services.hub.close_sockets(grace=SOCKETS_GRACE),
            drain(app.settings["in_flight"], server, settings.shutdown_timeout),
        )
    finally:
        # After the drain: the writes it let finish have reached Redis or stopped the lease.
        await lease.close()
        await services.close()
    log.info("stopped")


def main(argv: Sequence[str] | None = None) -> None:
    try:
        settings = load_settings(sys.argv[1:] if argv is None else argv)
    except SettingsError as exc:
        sys.exit(f"todo-server: {exc}")
    # stderr, which supervisor folds into the instance's rotated log (redirect_stderr).
    stop_logging = logs.install(
        level=logging.DEBUG if settings.debug else logging.INFO, stream=sys.stderr
    )
    try:
        # libuv's event loop: same asyncio API, much less overhead per socket event.
        uvloop.run(serve(settings))
    except StartupError as exc:
        stop_logging()
        sys.exit(f"todo-server: {exc}")
    stop_logging()
