"""The application factory: routes joined from the handler modules, services passed in."""

from __future__ import annotations

from functools import partial
from pathlib import Path

from tornado.web import Application, RequestHandler

from handlers import accounts, health, jobs, metrics, todos, ws
from handlers.base import NotFoundHandler
from server.infra import logs
from server.web.inflight import InFlight
from server.web.metrics import Metrics
from server.web.services import Services

# It stays in server/, where setup.cfg's package_data ships it.
OPENAPI_FILE = Path(__file__).resolve().parents[1] / "openapi.json"


def request_finished(
    metrics: Metrics, access_log: logs.AccessLog, handler: RequestHandler
) -> None:
    """Tornado's log_function: the one place that sees every finished request."""
    route = metrics.route_of(handler)
    access_log(handler, route)
    metrics.observe(handler, route)


def make_app(services: Services) -> Application:
    routes = [
        *todos.default_handlers,
        *jobs.default_handlers,
        *accounts.default_handlers,
        *health.default_handlers,
        *metrics.default_handlers,
        *ws.default_handlers,
    ]
    instance_metrics = Metrics(services, routes)
    settings = services.settings
    access_log = logs.AccessLog(
        slow_ms=settings.slow_request_ms, sample=settings.access_log_sample
    )
    return Application(
        routes,
        services=services,
        in_flight=InFlight(),
        metrics=instance_metrics,
        log_function=partial(request_finished, instance_metrics, access_log),
        openapi_spec=OPENAPI_FILE.read_bytes(),
        default_handler_class=NotFoundHandler,
        debug=services.settings.debug,
        # The API speaks JSON only: no cookies, no XSRF forms, no static files.
        xsrf_cookies=False,
        compress_response=True,
        # Notification sockets: pings find dead peers (no pong within the timeout closes the
        # socket); clients only ever send tiny messages.
        websocket_ping_interval=services.settings.ws_ping_interval,
        websocket_ping_timeout=services.settings.ws_ping_timeout,
        websocket_max_message_size=ws.MAX_INCOMING_MESSAGE,
    )
