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

from server.infra.addresses import is_sentinel_url
from server.infra.settings import PROJECT_ROOT, Settings

CELERY_CONFIG_FILE = PROJECT_ROOT / "conf" / "celeryconfig.py"
# How long to wait on one Sentinel before asking the next: a Sentinel on a host that is cut
# off must not hold a publish for Celery's default of no timeout at all.
SENTINEL_TIMEOUT_SECONDS = 1.0
# A master whose host is cut off never closes its connections: without a timeout, a publish, a
# worker's heartbeat or a result written on one waits forever (kombu's and redis-py's default;
# Celery's results wait 120 s), and a worker's event loop with it. Far above the queue's
# slowest answer, an fsync'd write. The failover tested in the lab: tests/lab/test_lab.py.
MASTER_TIMEOUT_SECONDS = 2.0
# kombu drops a worker's BRPOP connection whose reply is this overdue, and redis-py PINGs a
# connection idle this long before using it again (kombu's default: 25 s).
MASTER_HEALTH_CHECK_SECONDS = 5
# How long a request waits for its job's publish. Celery's retries, each bounded by
# MASTER_TIMEOUT_SECONDS and a Sentinel lookup, add up to ~16 s while a master's host is cut off
# (measured in the lab), and the lab's edge gives up on an instance after 5 s with a 504 while
# the job may still be published: the client cannot tell. Answered by then, it gets a 503.
PUBLISH_DEADLINE_SECONDS = 3.0
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
    config = load_celery_config()
    app.config_from_object(config)
    # With sentinel:// URLs, Celery asks the Sentinels for the master named here (and again
    # after every lost connection, so a promoted replica is found without a restart).
    for url, option in ((settings.broker_url, "broker_transport_options"),
                        (settings.result_backend, "result_backend_transport_options")):
        if is_sentinel_url(url):
            app.conf[option] = {**getattr(config, option), **sentinel_options(settings)}
    if results and is_sentinel_url(settings.result_backend):
        # Celery's result backend reads its timeouts from these settings, not the options.
        app.conf.redis_socket_timeout = MASTER_TIMEOUT_SECONDS
        app.conf.redis_socket_connect_timeout = MASTER_TIMEOUT_SECONDS
    return app


def sentinel_options(settings: Settings) -> dict[str, object]:
    """Transport options of a queue whose master the Sentinels name."""
    timeouts = {"socket_timeout": SENTINEL_TIMEOUT_SECONDS,
                "socket_connect_timeout": SENTINEL_TIMEOUT_SECONDS}
    return {"master_name": settings.broker_master_name, "sentinel_kwargs": timeouts,
            "socket_timeout": MASTER_TIMEOUT_SECONDS,
            "health_check_interval": MASTER_HEALTH_CHECK_SECONDS}


def publish(app: Celery, task_name: str, job_id: str) -> None:
    """Publish a job (blocking: a worker's thread may call it, an event loop must not)."""
    # The job id is the task id too: the worker's log lines name the job.
    app.send_task(task_name, args=[job_id], task_id=job_id)


async def enqueue(app: Celery, task_name: str, job_id: str) -> None:
    """Publish a job for the workers. Celery talks to Redis synchronously: the call runs in
    the default executor so that the event loop never waits on the broker."""
    loop = asyncio.get_running_loop()
    publishing = loop.run_in_executor(None, partial(publish, app, task_name, job_id))
    # A TimeoutError (an OSError, so one of PUBLISH_FAILURES): the caller answers 503 in time
    # and makes sure the job never runs, though the thread may still publish it.
    await asyncio.wait_for(publishing, PUBLISH_DEADLINE_SECONDS)


async def close(app: Celery) -> None:
    """Close the app's broker connections (blocking calls, hence the executor)."""
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, app.close)

