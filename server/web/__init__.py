"""The Tornado instance process: one web instance behind nginx, as supervisord runs it.

`main` is the entry point (`todo-server`, `python -m server`): settings, services, the HTTP
server and a graceful shutdown; `app` is the application factory that joins the handler
modules' route lists; `services` opens the clients and stores of one instance on its running
loop; `hub` (with `channels`) relays live notifications from Redis to this instance's
WebSockets; `inflight` counts the requests a shutdown drains; `metrics` is its Prometheus
registry.

May import: server.domain, server.infra, the top-level `handlers` package and itself; never
server.worker (jobs reach the workers through server.infra.queue).
"""
