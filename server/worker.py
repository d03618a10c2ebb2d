"""The worker's entry point: `celery -A server.worker worker`.

The one module-level app of the project, because Celery's command line imports one: it is
built from the settings the environment and conf file give (TODO_*, as for the server). The
app opens no connection until the worker starts; the tasks open theirs on first use.
"""

from __future__ import annotations

from server.infra.queue import make_celery
from server.infra.settings import load_settings

app = make_celery(load_settings(), worker=True)
