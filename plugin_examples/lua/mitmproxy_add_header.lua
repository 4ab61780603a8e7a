-- mitmproxy's first example script (add_header.py), event for event: `response` adds a
-- header to every response before it is returned to the client.
--   proxy --script ./plugin_examples/lua/mitmproxy_add_header.lua
function response(flow)
  flow.response.headers["newheader"] = "foo"
end
