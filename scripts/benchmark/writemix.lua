-- The benchmark's write mix (scripts/bench/writemix.py runs it with wrk -s): per request 40%
-- creates (POST /todo, a new Idempotency-Key each, the key also in the content so the 201's body
-- names it), 20% finishes (PUT /todo/<id>/finish of a todo this thread created) and 40% reads
-- (GET /todo). Every acknowledged create and finish is written to $BENCH_WRITEMIX_OUT at the
-- end, so MongoDB can be asked whether each of them is stored.

local prefix = os.getenv("BENCH_KEY_PREFIX") or "bench"
local threads = {}

function setup(thread)
   table.insert(threads, thread)
   thread:set("thread_id", #threads)
end

local counter = 0
local created = {}    -- ids this thread created: what it may finish
acked = {}            -- "<key> <id>" of every 201 (globals: done() reads them per thread)
finished = {}         -- ids of every finish answered 200
reads = 0

function init(args)
   math.randomseed(thread_id * 7919 + os.time())
end

local function headers_with(extra)
   local headers = {}
   for name, value in pairs(wrk.headers) do headers[name] = value end
   for name, value in pairs(extra) do headers[name] = value end
   return headers
end

function request()
   counter = counter + 1
   local pick = math.random()
   if pick < 0.2 and #created > 0 then
      local id = created[math.random(#created)]
      return wrk.format("PUT", "/todo/" .. id .. "/finish", headers_with({}), "")
   elseif pick < 0.6 then
      return wrk.format("GET", "/todo", headers_with({}), nil)
   end
   local key = prefix .. "-" .. thread_id .. "-" .. counter
   local body = '{"content": "bench write ' .. key .. '"}'
   return wrk.format("POST", "/todo", headers_with({
      ["Content-Type"] = "application/json", ["Idempotency-Key"] = key,
   }), body)
end

function response(status, headers, body)
   if status == 201 then
      -- Any JSON spacing: the service may change its encoder.
      local id = body:match('"id"%s*:%s*"(%x+)"')
      local key = body:match('"content"%s*:%s*"bench write ([^"]+)"')
      if id and key then
         table.insert(created, id)
         table.insert(acked, key .. " " .. id)
      end
   elseif status == 200 then
      if body:match('^%s*{%s*"data"') then
         reads = reads + 1
      else
         local id = body:match('"id"%s*:%s*"(%x+)"')
         if id then table.insert(finished, id) end
      end
   end
end

function done(summary, latency, requests)
   local out = assert(io.open(os.getenv("BENCH_WRITEMIX_OUT"), "w"))
   for _, thread in ipairs(threads) do
      for _, line in ipairs(thread:get("acked")) do out:write("created ", line, "\n") end
      for _, id in ipairs(thread:get("finished")) do out:write("finished ", id, "\n") end
      out:write("reads ", thread:get("reads"), "\n")
   end
   out:close()
end
