"""Tornado RequestHandler classes; each module ends with its `default_handlers` route list
(except base.py, their base class, and cookies.py, the browser session's cookie and CSRF rules).

The HTTP layer of the web side: server/web/app.py joins the route lists. May import
server.web (the services, metrics and hub of the running instance), server.domain and
server.infra; never server.worker.
"""
