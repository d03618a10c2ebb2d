"""The worker's Celery app: the queue's app with a result backend, every task registered, and
the sweeper installed to run while the worker is up."""

from __future__ import annotations

from celery import Celery

from server.infra.queue import make_celery
from server.infra.settings import Settings
from server.worker import sweeper, tasks


def make_worker_app(settings: Settings) -> Celery:
    """A Celery app that runs the jobs: the tasks and the sweeper bring the synchronous clients
    only workers need."""
    app = make_celery(settings, results=True)
    tasks.register(app, settings)
    sweeper.install(app, settings)
    return app
