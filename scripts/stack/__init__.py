"""`todo-stack`: the production topology on one machine (supervisord running MongoDB, Redis, the
instances, the worker and nginx), brought up, down and restarted without a dropped request.

`config` is what the stack was asked for and the nginx and supervisord configs rendered from
conf/; `sentinel` the job queue's Sentinels and the start of its nodes (`--queue-sentinels`);
`supervisor` drives supervisord and reloads nginx; `commands` are up, down, status, restart
and ctl (`main` is the console script).
"""
