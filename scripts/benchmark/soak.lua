-- The soak's pacing (scripts/bench/soak.py): wrk cannot limit its rate, but each connection
-- waits $BENCH_DELAY_MS before its next request, so connections x (delay + latency) sets it.
local wait = tonumber(os.getenv("BENCH_DELAY_MS") or "10")

function delay()
   return wait
end
