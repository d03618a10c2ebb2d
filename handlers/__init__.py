"""Tornado RequestHandler classes; each module ends with its `default_handlers` route list.

The HTTP layer of the web side: server/web/app.py joins the route lists. May import
server.web (the services, metrics and hub of the running instance), server.domain and
server.infra; never server.worker.
"""
