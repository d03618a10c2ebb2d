"""The worker's entry point: `celery -A server.worker.main worker`.

The one module-level app of the project, because Celery's command line imports one: it is
built from the settings the environment and conf file give (TODO_*, as for the server). The
app opens no connection until the worker starts; the tasks open theirs on first use.
"""

from __future__ import annotations

from server.infra.settings import load_settings
from server.worker.app import make_worker_app

app = make_worker_app(load_settings())
