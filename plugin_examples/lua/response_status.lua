-- Rewrites a response: status, reason and headers (Tiri-style response interceptor).
--   proxy --plugins ./plugin_examples/lua/response_status.lua
function response(flow)
  flow.metadata.seen = true
  if flow.response.status_code == 404 then
    flow.response.status_code = 410
    flow.response.reason = "Gone"
  end
  flow.response.headers["x-served-by"] = "lua"
  flow.response.headers["server"] = nil
  flow.response.headers:add("x-request-path", flow.request.path)
end
