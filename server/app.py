"""The application factory: routes joined from the handler modules, services passed in."""

from __future__ import annotations

from pathlib import Path

from tornado.web import Application

from handlers import accounts, health, todos
from handlers.base import NotFoundHandler
from server.inflight import InFlight
from server.services import Services

OPENAPI_FILE = Path(__file__).with_name("openapi.json")


def make_app(services: Services) -> Application:
    routes = [*todos.default_handlers, *accounts.default_handlers, *health.default_handlers]
    return Application(
        routes,
        services=services,
        in_flight=InFlight(),
        openapi_spec=OPENAPI_FILE.read_bytes(),
        default_handler_class=NotFoundHandler,
        debug=services.settings.debug,
        # The API speaks JSON only: no cookies, no XSRF forms, no static files.
        xsrf_cookies=False,
        compress_response=True,
    )
