"""`todo-bench` (what scripts/bench runs): the benchmark of issue 9, one table against the
physical ceiling.

cli.py (options, the whole run), plan.py (the rows and their alternating rounds), wrk.py (one
wrk run and its numbers), api.py (the service's HTTP API, keep-alive), seeding.py (users with
N todos straight into MongoDB), hooks.py (the ceiling and floor behind the stack's own nginx),
floor.py (the bare Tornado process), edge.py (`todo-stack edge on|off`), writemix.py (+ .lua:
creates, finishes, reads and the count in MongoDB), rss.py (instances' memory), soak.py,
report.py (the markdown tables). Imports scripts and server layers only, like every script.
"""
