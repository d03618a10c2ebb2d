"""The job queue: the Celery app built from settings by a factory, with no client created on
import, and the functions that put a job on the queue.

Web instances and workers build their own app. An instance only publishes jobs, through
`enqueue`; a worker runs them with an app that server/worker/app.py builds on this one
(`celery -A server.worker.main worker`, where the module-level app for the command lives).
"""

from __future__ import annotations

import asyncio
import importlib.util
from functools import partial
from types import ModuleType

from celery import Celery
from kombu.exceptions import KombuError
from redis.exceptions import RedisError

from server.infra.settings import PROJECT_ROOT, Settings

CELERY_CONFIG_FILE = PROJECT_ROOT / "conf" / "celeryconfig.py"
# What publishing a job raises when the broker cannot be reached (kombu wraps redis-py's
# errors in OperationalError, but not on every path).
PUBLISH_FAILURES = (KombuError, RedisError, OSError)


def load_celery_config() -> ModuleType:
    """conf/celeryconfig.py as a module; loaded by path, since conf/ is not a package."""
    spec = importlib.util.spec_from_file_location("todo_celeryconfig", CELERY_CONFIG_FILE)
    if spec is None or spec.loader is None:  # pragma: no cover - the file ships with the code
        raise ImportError(f"cannot load {CELERY_CONFIG_FILE}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def make_celery(settings: Settings, *, results: bool = False) -> Celery:
    """A Celery app on the settings' broker, with no task registered; `results` gives it the
    settings' result backend (a worker's app: server/worker/app.py).

    A web instance gets no result backend: it never reads Celery's results (the job records in
    MongoDB are the truth), and with one, every published job would subscribe the instance to
    that job's result channel, a subscription nothing ever drains.
    """
    app = Celery(
        "todo",
        broker=settings.broker_url,
        backend=settings.result_backend if results else None,
        set_as_current=False,
    )
    app.config_from_object(load_celery_config())
    return app


def publish(app: Celery, task_name: str, job_id: str) -> None:
    """Publish a job (blocking: a worker's thread may call it, an event loop must not)."""
    # The job id is the task id too: the worker's log lines name the job.
    app.send_task(task_name, args=[job_id], task_id=job_id)


async def enqueue(app: Celery, task_name: str, job_id: str) -> None:
    """Publish a job for the workers. Celery talks to Redis synchronously: the call runs in
    the default executor so that the event loop never waits on the broker."""
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, partial(publish, app, task_name, job_id))


async def close(app: Celery) -> None:
    """Close the app's broker connections (blocking calls, hence the executor)."""
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, app.close)

