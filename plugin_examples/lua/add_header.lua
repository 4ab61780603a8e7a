-- Adds a header to every request (Roxy's and mitmproxy's add-header example).
--   proxy --plugins ./plugin_examples/lua/add_header.lua
function request(flow)
  flow.request.headers["x-roxy-example"] = "true"
end
