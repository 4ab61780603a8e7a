-- Tiri's request and response interceptors, on this engine's events.
-- Tiri registers them with proxy.addRequestInterceptor / addResponseInterceptor and passes
-- (Request, Flow); here the same functions are listed and called from `request` and
-- `response` with (flow.request, flow): the request and response are live, so edits
-- reach the origin and the client, as in Tiri.
--   proxy --script ./plugin_examples/lua/tiri_interceptors.lua
local request_interceptors, response_interceptors = {}, {}

local function add_request_interceptor(f) request_interceptors[#request_interceptors + 1] = f end
local function add_response_interceptor(f) response_interceptors[#response_interceptors + 1] = f end

add_request_interceptor(function(Request, Flow)
  Request.headers["user-agent"] = "Kotuku-Proxy/1.0"
  Request.headers["x-flow-id"] = tostring(Flow.id)
  return Request
end)

add_response_interceptor(function(Response, Flow)
  Response.headers["x-proxy-flow"] = tostring(Flow.id)
  Response.headers["cache-control"] = "no-cache"
  return Response
end)

-- Handlers in a returned table: a global `error` function would hide Lua's own `error`.
return {
  request = function(flow)
    for _, f in ipairs(request_interceptors) do
      -- A truthy return marks the flow as modified (Tiri's `modified`).
      if f(flow.request, flow) then flow.metadata.modified = true end
    end
  end,

  response = function(flow)
    for _, f in ipairs(response_interceptors) do
      if f(flow.response, flow) then flow.metadata.modified = true end
    end
  end,

  -- Tiri's onError: the stable code and message of the failure.
  error = function(flow, err)
    print(string.format("Proxy error %s: %s", err.code, err.message))
  end,
}
