"""`todo-bench` (what scripts/bench runs): the benchmark of issue 9, one table against the
physical ceiling.

cli.py (options, the whole run), target.py (where it points: the stack's nginx, where the
floor runs, how nginx is checked and the edge switched; the lab's is scripts/netlab/bench.py),
plan.py (the rows and their alternating rounds), wrk.py (one wrk run and its numbers), api.py
(the service's HTTP API, keep-alive), seeding.py (users with N todos straight into MongoDB),
hooks.py (the ceiling and floor behind the target's nginx), floor.py (the bare Tornado
process), edge.py (the edge on and off, the target's way), writemix.py (+ .lua: creates,
finishes, reads and the count in MongoDB), rss.py (instances' memory), soak.py, report.py (the
markdown tables). Imports scripts and server layers only, like every script.
"""
