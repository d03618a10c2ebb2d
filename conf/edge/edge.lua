-- The edge: nginx answers `GET /todo` (the default first page) for a valid bearer token (in the
-- Authorization header or a browser's session cookie) straight from the Redis page cache,
-- without an instance. It answers only what it is sure of; every other request, and every one
-- it has a doubt about, goes on to the instances unchanged (the caller falls through to
-- proxy_pass). See docs/design.md, "The edge".
--
-- Loaded by init_by_lua (edge.init, in the master: it reads the signing secret there, before
-- workers drop privileges), init_worker_by_lua (edge.init_worker: the metrics timer) and
-- access_by_lua (edge.access, per request).

local redis = require "nginx.redis"
local sha256 = require "nginx.sha256"
local to_hex = require "nginx.string".to_hex
local b64 = require "ngx.base64"
local lrucache = require "resty.lrucache"

local ngx = ngx
local ngx_var = ngx.var
local ngx_now = ngx.now
local ngx_null = ngx.null
local sha1_bin = ngx.sha1_bin
local re_find = ngx.re.find
local re_match = ngx.re.match
local re_gmatch = ngx.re.gmatch
local str_byte = string.byte
local str_char = string.char
local str_find = string.find
local str_sub = string.sub
local str_lower = string.lower
local concat = table.concat
local tonumber = tonumber
local type = type
local pairs = pairs
local ipairs = ipairs
local next = next
local select = select
local unpack = unpack
local bxor = bit.bxor

local _M = { _VERSION = "1.0" }

-- Byte-identical to the instances' (server/domain/tokens.py INVALID_TOKEN, json.dumps).
local UNAUTHORIZED_BODY = '{"error": {"status": 401, "message": '
    .. '"missing, invalid, expired or revoked bearer token"}}'
local JSON_TYPE = "application/json; charset=UTF-8"
-- What the instances' Tornado (compress_response) sends on every reply; nginx's gzip_vary adds
-- its own after it, on either path.
local VARY = "Accept-Encoding"
local METRICS = "todo_edge"
local REFRESHES = "todo_edge_refresh"
-- Per owner, per nginx: one request a second takes a stale or missing page to an instance.
local REFRESH_EVERY = 1
-- How long, in seconds, the rest of a burst wait for a missing page, looking every MISS_POLL.
local MISS_WAIT = 1
local MISS_POLL = 0.02
-- How long a waiter gives the request that went on to take the load lock.
local LOCK_GRACE = 0.05
local PUSH_INTERVAL = 1

-- Set once by init() in the master; workers inherit them.
local conf
local inner_pad, outer_pad  -- HMAC-SHA256 key pads: HMAC(k, m) = H(ko .. H(ki .. m))
local keys_suffix           -- the MGET keys after page and revoked (synced, the leases)

-- At most pool_size connections per worker, kept open; a request finding them all busy waits in
-- the backlog (bounded by the connect timeout) for one to come back to the pool. The pool is
-- as large as the connections one worker may hold (nginx need not spread clients evenly over
-- its workers): measured at -c 1000, a pool of 64 or 512 made requests time out in that queue
-- while a busy machine starved Redis of CPU, and each timeout sent a worker's reads to the
-- instances for the cool-down. Without a pool, a burst opens a Redis connection per request.
local connect_options

-- Per worker: after a Redis error, Redis is skipped until then (seconds, ngx.now()).
local redis_down_until = 0

-- Per worker, to spare the hot path work it already did. Tokens whose signature checked out:
-- token -> { owner, token id, expiry }; expiry and revocation are still checked every time.
local verified = lrucache.new(10000)
-- Replies built from a stored page: owner -> { stored, link, body, etag }, reused while the
-- stored page and the link are the same (Lua compares interned strings by address).
local built = lrucache.new(1000)

local function count(name)
    local dict = ngx.shared[METRICS]
    if dict then
        dict:incr(name, 1, 0)
    end
end

local function trim(text)
    return (text:gsub("^%s+", ""):gsub("%s+$", ""))
end

local function read_secret(path)
    local file, err = io.open(path, "rb")
    if not file then
        return nil, err
    end
    local secret = file:read("*a")
    file:close()
    secret = trim(secret)
    if #secret < 32 then
        return nil, "secret in " .. path .. " is shorter than 32 characters"
    end
    return secret
end

local function pads(key)
    local inner, outer = {}, {}
    for i = 1, 64 do
        local byte = str_byte(key, i) or 0
        inner[i] = str_char(bxor(byte, 0x36))
        outer[i] = str_char(bxor(byte, 0x5c))
    end
    return concat(inner), concat(outer)
end

local function digest256(...)
    local hash = sha256:new()
    for i = 1, select("#", ...) do
        hash:update((select(i, ...)))
    end
    return hash:final()
end

-- Called from init_by_lua with what todo-stack rendered: redis_host, redis_port, redis_db,
-- prefix, instances (names), secret_file, timeout_ms, cooldown.
function _M.init(settings)
    local secret, err = read_secret(settings.secret_file)
    if not secret then
        error("edge: cannot read the signing secret: " .. err)
    end
    conf = settings
    connect_options = { pool_size = conf.pool_size, backlog = conf.backlog }
    -- The instances' key: sha256("todo-token:" .. secret), raw (server/domain/tokens.py).
    inner_pad, outer_pad = pads(digest256("todo-token:" .. secret))
    keys_suffix = { conf.prefix .. "revocations-synced" }
    for _, name in ipairs(conf.instances) do
        keys_suffix[#keys_suffix + 1] = conf.prefix .. "edge-lease:" .. name
    end
end

local function sign(payload)
    local mac = digest256(outer_pad, digest256(inner_pad, payload))
    return b64.encode_base64url(mac)
end

-- The token's claims { owner hex, token id, expiry }, or nil and "invalid" when we did not sign
-- it (nil and "pass": signed, but not understood). Only called on a token of base64url
-- characters, one dot.
local function check_signature(token)
    local dot = str_find(token, ".", 1, true)
    local payload, signature = str_sub(token, 1, dot - 1), str_sub(token, dot + 1)
    if sign(payload) ~= signature then
        return nil, "invalid"
    end
    local raw = b64.decode_base64url(payload)
    local m = raw and re_find(raw, [[^[0-9a-f]{24}\.[A-Za-z0-9_-]+\.[0-9]{1,15}$]], "jo")
    if not m then
        -- Signed by us but not understood: the instances decide.
        return nil, "pass"
    end
    local first = str_find(raw, ".", 1, true)
    local last = str_find(raw, ".", first + 1, true)
    return { str_sub(raw, 1, first - 1), str_sub(raw, first + 1, last - 1),
             tonumber(str_sub(raw, last + 1)) }
end

-- The token's (owner hex, token id), or nil and "invalid" / "pass" (see check_signature).
local function decode(token)
    local claims = verified:get(token)
    if not claims then
        local err
        claims, err = check_signature(token)
        if not claims then
            return nil, err
        end
        verified:set(token, claims)
    end
    if claims[3] <= ngx_now() then
        return nil, "invalid"
    end
    return claims[1], claims[2]
end

local function unauthorized()
    count("unauthorized")
    ngx.status = 401
    ngx.header["Content-Type"] = JSON_TYPE
    ngx.header["Vary"] = VARY
    ngx.header["Content-Length"] = #UNAUTHORIZED_BODY
    ngx.header["Www-Authenticate"] = 'Bearer realm="todo"'
    ngx.print(UNAUTHORIZED_BODY)
    return ngx.exit(ngx.HTTP_OK)
end

local function pass(reason)
    count("pass:" .. reason)
    -- Back to nginx: the location's proxy_pass sends the request to an instance.
end

-- A pooled connection, ready for commands; nil, err when Redis cannot be reached in time.
local function connect()
    local red = redis:new()
    -- Set before connecting: a hung Redis costs one short wait, then the request passes.
    red:set_timeout(conf.connect_timeout_ms)
    local ok, err
    if str_sub(conf.redis_host, 1, 5) == "unix:" then
        ok, err = red:connect(conf.redis_host, connect_options)
    else
        ok, err = red:connect(conf.redis_host, conf.redis_port, connect_options)
    end
    if not ok then
        return nil, err
    end
    red:set_timeout(conf.timeout_ms)
    if red:get_reused_times() == 0 then
        -- A new connection: log in and pick the database once; pooled ones keep both.
        if conf.redis_password ~= "" then
            ok, err = red:auth(conf.redis_password)
        end
        if ok and conf.redis_db ~= 0 then
            ok, err = red:select(conf.redis_db)
        end
        if not ok then
            red:close()
            return nil, err
        end
    end
    return red
end

-- One MGET: page, revocation, the page's load lock (server/infra/cache.py), revocations-synced,
-- every instance's lease. nil, err on failure.
local function fetch(owner, token_id)
    local red, err = connect()
    if not red then
        return nil, err
    end
    local res
    res, err = red:mget(conf.prefix .. "page:" .. owner, conf.prefix .. "revoked:" .. token_id,
                        conf.prefix .. "lock:" .. owner, unpack(keys_suffix))
    if not res then
        red:close()
        return nil, err
    end
    red:set_keepalive(conf.keepalive_ms, conf.pool_size)
    return res
end

-- Tornado's check_etag_header: `*` first, or any listed tag equal once W/ is dropped.
local function etag_matches(header, etag)
    local first = true
    for m in re_gmatch(header, [[\*|(?:W/)?"[^"]*"]], "jo") do
        local tag = m[0]
        if first and tag == "*" then
            return true
        end
        first = false
        if str_sub(tag, 1, 2) == "W/" then
            tag = str_sub(tag, 3)
        end
        if tag == etag then
            return true
        end
    end
    return false
end

-- Whether this request is the one (per owner, per REFRESH_EVERY seconds, across this nginx's
-- workers) to take a stale or missing page to an instance to be (re)loaded.
local function refresh_due(owner)
    local dict = ngx.shared[REFRESHES]
    if not dict then
        return true
    end
    local added, err = dict:add(owner, true, REFRESH_EVERY)
    return added or err ~= "exists"
end

local function serve(headers, owner, stored)
    local bar = str_find(stored, "|", 1, true)
    local newline = bar and str_find(stored, "\n", bar + 1, true)
    if not newline then
        return pass("unreadable")
    end
    local fresh_until = tonumber(str_sub(stored, 1, bar - 1))
    if not fresh_until then
        return pass("unreadable")
    end
    if ngx_now() * 1000 >= fresh_until and refresh_due(owner) then
        -- Stale: this request goes on, and its instance reloads the page. Until the new one
        -- is stored, the others get this copy, as they would from an instance: it is still
        -- the latest (a write deletes the page), so read-your-writes holds.
        return pass("stale")
    end
    local cursor = str_sub(stored, bar + 1, newline - 1)
    local link = "null"
    if cursor ~= "" then
        local host = ngx_var.client_host
        -- Anything json.dumps or urlencode would escape: the instances build that link.
        if not re_find(cursor, [[^[A-Za-z0-9_-]+$]], "jo")
                or not re_find(host, [[^[A-Za-z0-9.:_\[\]-]+$]], "jo") then
            return pass("escape")
        end
        link = '"' .. ngx_var.scheme .. "://" .. host .. "/todo?cursor=" .. cursor .. '"'
    end
    local reply = built:get(owner)
    if not reply or reply[1] ~= stored or reply[2] ~= link then
        local body = '{"data": ' .. str_sub(stored, newline + 1) .. ', "next": ' .. link .. "}"
        -- Tornado's compute_etag.
        reply = { stored, link, body, '"' .. to_hex(sha1_bin(body)) .. '"' }
        built:set(owner, reply)
    end
    local body, etag = reply[3], reply[4]
    local if_none_match = headers["if-none-match"]
    if if_none_match then
        if type(if_none_match) == "table" then
            if_none_match = concat(if_none_match, ",")
        end
        if not etag_matches(if_none_match, etag) then
            -- nginx's own not-modified filter has other rules than Tornado's: let Tornado
            -- answer (this is a client whose copy is out of date, a rare case).
            return pass("etag")
        end
        count("hits")
        -- Like Tornado: no body and none of the representation headers.
        ngx.status = 304
        ngx.header["Etag"] = etag
        ngx.header["Vary"] = VARY
        ngx.send_headers()
        return ngx.exit(ngx.HTTP_OK)
    end
    count("hits")
    ngx.status = 200
    ngx.header["Content-Type"] = JSON_TYPE
    ngx.header["Vary"] = VARY
    ngx.header["Content-Length"] = #body
    ngx.header["Etag"] = etag
    ngx.print(body)
    return ngx.exit(ngx.HTTP_OK)
end

-- The token of an Authorization header, which always wins, like the instances: the scheme
-- before the first space, case-insensitive, then the token stripped. nil and "none" when the
-- instances would answer 401 for want of a token; nil and "pass" when anything is unusual in it
-- (they decide).
local function bearer_token(auth)
    if type(auth) ~= "string" then
        return nil, "pass"
    end
    local space = str_find(auth, " ", 1, true)
    if not space then
        return nil, "pass"
    end
    if str_lower(str_sub(auth, 1, space - 1)) ~= "bearer" then
        return nil, "none"
    end
    local token = str_sub(auth, space + 1)
    if not re_find(token, [[^ *[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+ *$]], "jo") then
        return nil, "pass"
    end
    return (token:gsub(" ", ""))
end

-- Without an Authorization header, a browser's `session` cookie (handlers/cookies.py) holds the
-- same token. Only the plain case is decided here: one Cookie header, the cookie once, its value
-- a token; anything the instances' cookie parser might read otherwise goes to them.
local function session_token(cookie)
    if cookie == nil then
        return nil, "none"
    end
    if type(cookie) ~= "string" then
        return nil, "pass"
    end
    local token
    for m in re_gmatch(cookie, [[(?:^|;)\s*session\s*=([^;]*)]], "jo") do
        if token then
            return nil, "pass"  -- twice: which one counts is the instances' business
        end
        token = m[1]
    end
    if not token then
        if str_find(cookie, "session", 1, true) then
            return nil, "pass"
        end
        return nil, "none"
    end
    local m = re_match(token, [[^\s*([A-Za-z0-9_-]+\.[A-Za-z0-9_-]+)\s*$]], "jo")
    if not m then
        return nil, "pass"
    end
    return m[1]
end

local function request_token(headers)
    local auth = headers["authorization"]
    if auth ~= nil then
        return bearer_token(auth)
    end
    return session_token(headers["cookie"])
end

-- access_by_lua of `location = /todo`: answer, or return and let proxy_pass run.
function _M.access()
    if ngx.req.get_method() ~= "GET" or ngx_var.request_uri ~= "/todo" then
        return pass("request")
    end
    local headers, truncated = ngx.req.get_headers(64)
    local length = headers["content-length"]
    if truncated or (length and length ~= "0") or headers["transfer-encoding"]
            -- These change what the instances answer (the X-Scheme header the link's scheme)
            -- or what nginx's not-modified filter does with a local reply.
            or headers["x-scheme"] or headers["if-match"] or headers["if-modified-since"]
            or headers["if-unmodified-since"] or headers["range"] then
        return pass("request")
    end
    local token, err = request_token(headers)
    if not token then
        if err == "none" then
            return unauthorized()
        end
        return pass("request")
    end
    local owner, token_id = decode(token)
    if not owner then
        if token_id == "invalid" then
            return unauthorized()
        end
        return pass("request")
    end
    local give_up_at = ngx_now() + MISS_WAIT
    local lock_grace_until = ngx_now() + LOCK_GRACE
    while true do
        if ngx_now() < redis_down_until then
            return pass("redis")
        end
        local res, err = fetch(owner, token_id)
        if not res then
            count("redis_errors")
            redis_down_until = ngx_now() + conf.cooldown
            ngx.log(ngx.WARN, "edge: redis failed, passing for ", conf.cooldown, "s: ", err)
            return pass("redis")
        end
        if res[2] ~= ngx_null then
            return unauthorized()  -- revoked: definitive
        end
        if res[4] == ngx_null then
            return pass("unsynced")
        end
        for i = 5, #res do
            if res[i] == ngx_null then
                return pass("lease")
            end
        end
        if res[1] ~= ngx_null then
            return serve(headers, owner, res[1])
        end
        -- Not cached: one request goes on and its instance loads the page; the others of a
        -- burst wait a little for it here (each look a fresh read of every key above) instead
        -- of all falling on the instances. They wait only while an instance holds the load
        -- lock (or for the loader to take it): a load that stored nothing, because a write
        -- came meanwhile, lets them go at once, as the instances' own waiters do.
        if refresh_due(owner) or ngx_now() >= give_up_at
                or (res[3] == ngx_null and ngx_now() >= lock_grace_until) then
            return pass("miss")
        end
        ngx.sleep(MISS_POLL)
    end
end

-- Adds this worker's share of the counters to the Redis hash the instances' /metrics read.
-- Deltas: taken out of the shared dict before the push, put back when it fails.
local function push_metrics(premature)
    if premature then
        return
    end
    local dict = ngx.shared[METRICS]
    local deltas = {}
    for _, name in pairs(dict:get_keys(0)) do
        local value = dict:get(name)
        if value and value > 0 then
            dict:incr(name, -value, 0)
            deltas[name] = value
        end
    end
    if next(deltas) == nil then
        return
    end
    local red, err = connect()
    local ok = red ~= nil
    if ok then
        red:init_pipeline()
        for name, value in pairs(deltas) do
            red:hincrby(conf.prefix .. "edge-metrics", name, value)
        end
        ok, err = red:commit_pipeline()
    end
    if not ok then
        if red then
            red:close()
        end
        for name, value in pairs(deltas) do
            dict:incr(name, value, 0)
        end
        ngx.log(ngx.INFO, "edge: metrics not pushed: ", err)
        return
    end
    red:set_keepalive(conf.keepalive_ms, conf.pool_size)
end

function _M.init_worker()
    -- One worker pushes the shared counters of all.
    if ngx.worker.id() == 0 then
        local ok, err = ngx.timer.every(PUSH_INTERVAL, push_metrics)
        if not ok then
            ngx.log(ngx.ERR, "edge: no metrics timer: ", err)
        end
    end
end

return _M
