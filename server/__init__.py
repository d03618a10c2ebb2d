"""The Todo API service: a Tornado application on MongoDB and Redis, with Celery workers.

The packages, and the direction their imports go (an arrow: "may import"):

    server/web     the Tornado instance process: entry point, application factory, services,
                   live-notification hub, metrics            -> handlers, domain, infra
    handlers/      (top level) the HTTP layer of the web side, one route list per module
                                                             -> web, domain, infra
    server/worker  the Celery worker process: tasks, job-record transitions, sweeper,
                   export and import files                   -> domain, infra
    server/domain  the stores and rules of the web side: todos, users, jobs, tokens,
                   validation, paging, uploads               -> infra
    server/infra   shared infrastructure: settings, clock, logs, Redis guard, cache,
                   notifications, the job queue              -> nothing of the project

web and worker never import each other: a job goes from a store to the workers through
server.infra.queue.enqueue. `python -m server` runs one web instance (server/__main__.py);
server/openapi.json is the API's description, served by the instances.
"""
