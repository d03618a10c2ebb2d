-- access_by_lua_file of `location = /todo`: the edge answers, or the request goes on to the
-- location's proxy_pass (limit_req has already counted it, in the phase before).
return require("edge").access()
