-- Answers requests to blocked.example with 403; the origin is never contacted.
--   proxy --script ./plugin_examples/lua/block.lua
local blocked = { ["blocked.example"] = true }

return {
  request = function(flow)
    if blocked[flow.request.host] then
      flow:reply(403, "blocked\n", { ["Content-Type"] = "text/plain" })
    end
  end,
}
