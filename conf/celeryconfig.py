"""Celery's configuration for the Todo API workers (loaded by server/infra/queue.py).

Broker and result backend URLs are not here: they are settings (broker_url, result_backend,
TODO_BROKER_URL, TODO_RESULT_BACKEND) like every other address the service uses.
"""

# JSON only: a message is data, never a pickle a forged message could turn into code.
task_serializer = "json"
result_serializer = "json"
accept_content = ["json"]
timezone = "UTC"
enable_utc = True

# A job's message is acknowledged when the job has finished, not when a worker takes it: a
# worker that dies half-way (kill -9, OOM, lost machine) leaves it to be delivered again.
task_acks_late = True
task_reject_on_worker_lost = True
# One message reserved per worker process at a time: a long job never holds others hostage.
worker_prefetch_multiplier = 1

# Time limits, in seconds. The soft limit raises SoftTimeLimitExceeded inside the job (which
# then fails cleanly); the hard limit kills the process running it.
task_soft_time_limit = 1740
task_time_limit = 1800
task_annotations = {
    "todo.purge": {"soft_time_limit": 540, "time_limit": 600},
    # An export reads every todo of its owner (100,000 take well under a minute).
    "todo.export": {"soft_time_limit": 1140, "time_limit": 1200},
    # An import reads its file twice and inserts at most 100,000 rows (seconds, in practice).
    "todo.import": {"soft_time_limit": 1140, "time_limit": 1200},
}
# The longest any job may run: the bound the visibility timeout and the supervisor's
# stopwaitsecs (scripts/stack/config.py) must exceed.
LONGEST_JOB_SECONDS = max(
    task_time_limit, *(limits["time_limit"] for limits in task_annotations.values())
)

# Redis has no acknowledgements: a reserved but unacknowledged message goes back to the queue
# after the visibility timeout. Longer than the longest job, or a running job is delivered a
# second time while the first worker is still on it.
VISIBILITY_TIMEOUT_SECONDS = 3600
broker_transport_options = {
    "visibility_timeout": VISIBILITY_TIMEOUT_SECONDS,
    "socket_connect_timeout": 2,
}
result_backend_transport_options = {"visibility_timeout": VISIBILITY_TIMEOUT_SECONDS}
# The job records in MongoDB are the truth; Celery's own results are kept for a day.
result_expires = 86400
broker_connection_retry_on_startup = True

# Publishing from the web instances: a few quick retries, then the request answers 503
# instead of holding a thread for Celery's default retry schedule.
task_publish_retry = True
task_publish_retry_policy = {
    "max_retries": 2,
    "interval_start": 0,
    "interval_step": 0.2,
    "interval_max": 0.5,
}

worker_hijack_root_logger = True
worker_send_task_events = False
