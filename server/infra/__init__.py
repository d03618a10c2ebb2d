"""Shared infrastructure: what both processes (a web instance, a Celery worker) stand on.

Settings (`settings`) and the checks of their addresses (`addresses`), the clock (`clock`),
JSON logs (`logs`), the Redis guard and the first-page cache (`redis_guard`, `cache`), the
publishers and message shapes of live notifications (`notifications`), the job queue
(`queue`: the publish-only Celery app, and `enqueue`, the one function the web side hands a
job to the workers through), and `caller`, the Protocol of a request's caller that
infrastructure names instead of the domain's Principal.

May import: nothing of the project outside server.infra (not domain, web, worker or handlers),
so that every other package can import it.
"""
