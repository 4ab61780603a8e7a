-- Burro's `ctx`/`mut` globals over the engine's flow object (see burro.rs).
-- Called with: the directory, `{path, text}` of _shared.lua (or nil), the hook files
-- `{ {hook, path, text}, ... }`, and the bodies the files mention `{request, response}`.
-- Returns the event handlers (marked `__burro`: the engine then ignores globals).
--
-- `ctx` and `ctx.req`/`ctx.resp` are fixed tables whose metatables read the running
-- event's flow: nothing is built until a field is read, and a table a field builds
-- (headers, cookies) is kept for the rest of the event.
local DIR, SHARED, HOOKS, WANTS_BODIES = ...

local load, error, type, tostring, tonumber = load, error, type, tostring, tonumber
local setmetatable, rawget, rawset, ipairs, pairs = setmetatable, rawget, rawset, ipairs, pairs
local lower, find, sub, match, gmatch = string.lower, string.find, string.sub, string.match, string.gmatch
local concat, tointeger = table.concat, math.tointeger

if package then
  package.path = DIR .. "/?.lua"
end
if BODIES == nil and (WANTS_BODIES.request or WANTS_BODIES.response) then
  BODIES = WANTS_BODIES
end

-- === the running event ===
local cur          -- the flow (nil in connect/close/flush)
local conn         -- the `conn` table of connect/close
local phase        -- "request", "response", "sent" (after_response, error), "conn", "flush"
local req_ud       -- cur.request, once read (false: none)
local resp_ud      -- cur.response, once read (false: none)
local cache        -- tables built for this event (headers, cookies)
local finish       -- set_finish was called in this event
local pending      -- request phase: the response set_finish sends

-- A private key of flow.metadata: set_finish was called in this exchange.
local FINISHED = {}

local function request_of()
  local r = req_ud
  if r == nil then
    r = cur and cur.request or false
    req_ud = r
  end
  return r
end

local function response_of()
  local r = resp_ud
  if r == nil then
    r = cur and cur.response or false
    resp_ud = r
  end
  return r
end

local function cached(key, build, arg)
  local c = cache
  if not c then
    c = {}
    cache = c
  end
  local v = c[key]
  if v == nil then
    v = build(arg)
    c[key] = v
  end
  return v
end

-- Header tables: lower-case names, repeated values joined with ", "; read with any case.
local ci = {
  __index = function(t, k)
    if type(k) == "string" then
      return rawget(t, lower(k))
    end
  end,
}

local function header_map(headers)
  local t = setmetatable({}, ci)
  if not headers then
    return t
  end
  for _, pair in ipairs(headers:items()) do
    local name = lower(pair[1])
    local old = rawget(t, name)
    rawset(t, name, old and (old .. ", " .. pair[2]) or pair[2])
  end
  return t
end

-- `Cookie` headers as an ordered list of {name, value}.
local function cookie_list(r)
  local list = {}
  for _, header in ipairs(r.headers:get_all("cookie")) do
    for part in gmatch(header, "[^;]+") do
      local name, value = match(part, "^%s*([^=]-)%s*=%s*(.-)%s*$")
      if name and name ~= "" then
        list[#list + 1] = { name, value }
      end
    end
  end
  return list
end

local function cookie_map(r)
  local t = {}
  for _, c in ipairs(cookie_list(r)) do
    local v = c[2]
    if sub(v, 1, 1) == '"' and sub(v, -1) == '"' and #v >= 2 then
      v = sub(v, 2, -2)
    end
    if t[c[1]] == nil then
      t[c[1]] = v
    end
  end
  return t
end

-- Go's ContentLength: the header's value, else the body's length when it is held,
-- else -1 for a chunked body, else 0.
local function content_length(m)
  local h = m.headers
  local cl = h and tonumber(h["content-length"])
  if cl then
    return cl
  end
  local body = m.body
  if type(body) == "string" then
    return #body
  end
  if h and h["transfer-encoding"] then
    return -1
  end
  return 0
end

local req_fields = {
  proto = function(r) return r.version end,
  host = function(r) return r.host end,
  scheme = function(r) return r.scheme end,
  method = function(r) return r.method end,
  path = function(r)
    local p = r.path
    local q = p and find(p, "?", 1, true)
    return q and sub(p, 1, q - 1) or p
  end,
  query = function(r) return r.query or "" end,
  url = function(r)
    local u = r.url
    if u and sub(u, 1, 1) == "/" then
      local host = r.headers["host"] or r.host
      if host then
        return r.scheme .. "://" .. host .. u
      end
    end
    return u
  end,
  headers = function(r) return cached("req_headers", header_map, r.headers) end,
  cookies = function(r) return cached("req_cookies", cookie_map, r) end,
  body = function(r) return r.body end,
  content_length = content_length,
}

local REQ = setmetatable({}, {
  __index = function(_, k)
    if k == "remote_addr" then
      if cur then
        return cur.client_addr
      end
      return conn and conn.client_addr
    end
    local r = request_of()
    local get = r and req_fields[k]
    if get then
      return get(r)
    end
  end,
  __newindex = function() error("ctx.req is read-only: use mut.req", 2) end,
})

local REASONS = {
  [200] = "OK", [201] = "Created", [202] = "Accepted", [204] = "No Content",
  [206] = "Partial Content", [301] = "Moved Permanently", [302] = "Found",
  [303] = "See Other", [304] = "Not Modified", [307] = "Temporary Redirect",
  [308] = "Permanent Redirect", [400] = "Bad Request", [401] = "Unauthorized",
  [402] = "Payment Required", [403] = "Forbidden", [404] = "Not Found",
  [405] = "Method Not Allowed", [406] = "Not Acceptable", [408] = "Request Timeout",
  [409] = "Conflict", [410] = "Gone", [411] = "Length Required",
  [413] = "Content Too Large", [415] = "Unsupported Media Type", [418] = "I'm a teapot",
  [422] = "Unprocessable Content", [429] = "Too Many Requests",
  [451] = "Unavailable For Legal Reasons", [500] = "Internal Server Error",
  [501] = "Not Implemented", [502] = "Bad Gateway", [503] = "Service Unavailable",
  [504] = "Gateway Timeout",
}

local resp_fields = {
  status_code = function(s) return s.status_code end,
  status = function(s)
    local code = s.status_code
    if not code then
      return nil
    end
    local reason = s.reason
    if reason and reason ~= "" then
      return code .. " " .. reason
    end
    return tostring(code)
  end,
  proto = function(s) return s.version end,
  headers = function(s) return cached("resp_headers", header_map, s.headers) end,
  body = function(s) return s.body end,
  content_length = content_length,
}

local RESP = setmetatable({}, {
  __index = function(_, k)
    local s = response_of()
    local get = s and resp_fields[k]
    if get then
      return get(s)
    end
  end,
  __newindex = function() error("ctx.resp is read-only: use mut.resp", 2) end,
})

local function finished_here()
  if finish then
    return true
  end
  if cur then
    return rawget(cur.metadata, FINISHED) == true
  end
  return false
end

local CTX = setmetatable({}, {
  __index = function(_, k)
    if k == "req" then
      -- Every exchange has a request (one the proxy refused before any plugin saw it
      -- reads empty fields); connect.lua and close.lua read the connection's.
      if conn or cur then
        return REQ
      end
    elseif k == "resp" then
      if response_of() then
        return RESP
      end
    elseif k == "id" then
      if cur then
        return cur.id
      end
      return conn and conn.id
    elseif k == "session_id" then
      if cur then
        return cur.conn_id
      end
      return conn and conn.id
    elseif k == "is_finished" then
      return finished_here()
    end
  end,
  __newindex = function() error("ctx is read-only: use mut", 2) end,
})

-- === mut ===

local function live_request(what)
  local r = phase == "request" and request_of()
  if not r then
    local why = cur and "the request was sent already" or "no request in this hook"
    error(what .. ": " .. why, 3)
  end
  cache = nil
  return r
end

local function set_cookies(r, list)
  local parts = {}
  for i, c in ipairs(list) do
    parts[i] = c[1] .. "=" .. c[2]
  end
  r.headers["cookie"] = #parts > 0 and concat(parts, "; ") or nil
end

local mut_req = {
  set_host = function(v) live_request("mut.req.set_host").host = v end,
  set_scheme = function(v) live_request("mut.req.set_scheme").scheme = v end,
  set_method = function(v) live_request("mut.req.set_method").method = v end,
  set_url = function(v) live_request("mut.req.set_url").url = v end,
  set_path = function(v)
    local r = live_request("mut.req.set_path")
    local q = r.query
    if q and type(v) == "string" and not find(v, "?", 1, true) then
      v = v .. "?" .. q
    end
    r.path = v
  end,
  set_body = function(v) live_request("mut.req.set_body").body = v end,
  set_header = function(k, v) live_request("mut.req.set_header").headers[k] = v end,
  add_header = function(k, v) live_request("mut.req.add_header").headers:add(k, v) end,
  del_header = function(k) live_request("mut.req.del_header").headers[k] = nil end,
  -- `cookie`: "name=value" or { name = ..., value = ... }.
  set_cookie = function(cookie)
    local r = live_request("mut.req.set_cookie")
    local name, value
    if type(cookie) == "table" then
      name, value = cookie.name, cookie.value
    elseif type(cookie) == "string" then
      name, value = match(cookie, "^%s*([^=;]-)%s*=%s*([^;]-)%s*$")
    end
    if type(name) ~= "string" or name == "" or value == nil then
      error("mut.req.set_cookie: expected \"name=value\" or {name = ..., value = ...}", 2)
    end
    value = tostring(value)
    local list, found = cookie_list(r), false
    for _, c in ipairs(list) do
      if c[1] == name then
        c[2], found = value, true
      end
    end
    if not found then
      list[#list + 1] = { name, value }
    end
    set_cookies(r, list)
  end,
  del_cookie = function(name)
    local r = live_request("mut.req.del_cookie")
    local list, kept = cookie_list(r), {}
    for _, c in ipairs(list) do
      if c[1] ~= name then
        kept[#kept + 1] = c
      end
    end
    if #kept ~= #list then
      set_cookies(r, kept)
    end
  end,
}

-- In before_request: the response set_finish sends. In after_request/before_response:
-- the origin's response, on its way to the client.
local function response_target(what)
  if phase == "request" then
    if not pending then
      pending = { headers = {} }
    end
    return nil, pending
  end
  local s = phase == "response" and response_of()
  if not s then
    local why = cur and "the response was sent already" or "no response in this hook"
    error(what .. ": " .. why, 3)
  end
  cache = nil
  return s
end

local function pending_key(p, k)
  local lk = lower(tostring(k))
  for name in pairs(p.headers) do
    if lower(name) == lk then
      return name
    end
  end
  return k
end

local mut_resp = {
  set_status = function(code)
    local s, p = response_target("mut.resp.set_status")
    code = tointeger(tonumber(code))
    if not code then
      error("mut.resp.set_status: expected a status code", 2)
    end
    if p then
      p.status = code
    else
      s.status_code = code
      s.reason = REASONS[code] or ""
    end
  end,
  set_body = function(body)
    local s, p = response_target("mut.resp.set_body")
    if p then
      p.body = body
    else
      s.body = body
    end
  end,
  set_header = function(k, v)
    local s, p = response_target("mut.resp.set_header")
    if p then
      p.headers[pending_key(p, k)] = v
    else
      s.headers[k] = v
    end
  end,
  add_header = function(k, v)
    local s, p = response_target("mut.resp.add_header")
    if p then
      local name = pending_key(p, k)
      local old = p.headers[name]
      p.headers[name] = old and (old .. ", " .. v) or v
    else
      s.headers:add(k, v)
    end
  end,
  del_header = function(k)
    local s, p = response_target("mut.resp.del_header")
    if p then
      p.headers[pending_key(p, k)] = nil
    else
      s.headers[k] = nil
    end
  end,
}

local MUT = {
  ctx = {
    set_finish = function()
      finish = true
      if cur then
        cur.metadata[FINISHED] = true
      end
    end,
  },
  req = mut_req,
  resp = mut_resp,
}

-- === loading ===

local function compile(path, text)
  local f, e = load(text, "@" .. path, "t", _ENV)
  if not f then
    error(e, 0)
  end
  return f
end

ctx, mut = CTX, MUT
if SHARED then
  compile(SHARED[1], SHARED[2])()
end
local hook = {}
for _, h in ipairs(HOOKS) do
  hook[h[1]] = compile(h[2], h[3])
end

local function begin(flow, name)
  cur, conn, phase = flow, nil, name
  req_ud, resp_ud, cache, finish, pending = nil, nil, nil, false, nil
  ctx, mut = CTX, MUT
end

local function over()
  cur, conn, req_ud, resp_ud, cache, pending = nil, nil, nil, nil, nil, nil
end

local handlers = { __burro = true }

local connect, close = hook.connect, hook.close
if connect then
  handlers.client_connect = function(c)
    begin(nil, "conn")
    conn = c
    connect()
    over()
  end
end
if close then
  handlers.client_disconnect = function(c)
    begin(nil, "conn")
    conn = c
    close()
    over()
  end
end

local before_request = hook.before_request
if before_request then
  handlers.request = function(flow)
    begin(flow, "request")
    -- A set_finish made before an error stands: the error is raised again after.
    local ok, e = pcall(before_request)
    if finish then
      local p = pending or {}
      flow:reply(p.status or 200, p.body ~= nil and tostring(p.body) or "", p.headers)
    end
    over()
    if not ok then
      error(e, 0)
    end
  end
end

local after_request, before_response = hook.after_request, hook.before_response
if after_request or before_response then
  handlers.response = function(flow)
    begin(flow, "response")
    if after_request then
      after_request()
    end
    if before_response and not finish then
      before_response()
    end
    over()
  end
end

local after_response = hook.after_response
if after_response then
  handlers.access_log = function(flow)
    begin(flow, "sent")
    after_response()
    over()
  end
end

local on_error = hook.error
if on_error then
  handlers.error = function(flow, e)
    begin(flow, "sent")
    e.msg = e.message
    err = e
    on_error()
    err = nil
    over()
  end
end

-- Request bodies reach the engine's exchange through a `request` handler: a directory
-- that reads them in later hooks only gets one that does nothing.
if not handlers.request and type(BODIES) == "table" and BODIES.request then
  handlers.request = function() end
end

-- WebSocket hooks, on the engine's websocket_* events: `ctx` reads the upgrade request
-- and its 101; ws_msg.lua gets `msg` (`type`,
-- `content` (assignable), `from_client`, `msg:drop()`).
local ws_open, ws_msg, ws_close = hook.ws_open, hook.ws_msg, hook.ws_close
if ws_open then
  handlers.websocket_start = function(flow)
    begin(flow, "ws")
    ws_open()
    over()
  end
end
if ws_msg then
  handlers.websocket_message = function(flow, m)
    begin(flow, "ws")
    msg = m
    ws_msg()
    msg = nil
    over()
  end
end
if ws_close then
  handlers.websocket_end = function(flow)
    begin(flow, "ws")
    ws_close()
    over()
  end
end

local flush = hook.flush
if flush then
  handlers.flush = function(o)
    begin(nil, "flush")
    opts = o
    flush()
    opts = nil
    over()
  end
end

return handlers
