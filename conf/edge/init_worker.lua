-- init_worker_by_lua_file: the timer that pushes the edge's counters to Redis.
require("edge").init_worker()
