"""The Celery worker process: what runs the jobs that web instances queue.

`main` holds the module-level app Celery's command line imports (`celery -A server.worker.main
worker`); `app` builds it (the tasks registered, the sweeper installed); `tasks` are the jobs
(purge, export, import) and `clients` the synchronous MongoDB and Redis clients they run with;
`records` moves job records through their states; `sweeper` requeues the jobs of dead workers
and deletes files nobody will read; `exporting` writes export files; `importing` and
`import_formats` read, check and insert an import's rows.

May import: server.domain, server.infra and itself; never server.web or handlers. Nothing
outside this package imports it (a store hands a job over through server.infra.queue).
"""
