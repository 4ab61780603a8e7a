-- Answers requests to blocked hosts with 403; the origin is never contacted.
--   proxy --script ./plugin_examples/lua/block.lua
--   proxy --plugins ./plugin_examples/lua/block.lua --set block.hosts=ads.example,track.example
options = {
  hosts = { default = { "blocked.example" }, help = "hosts to answer with 403" },
}

local blocked = {}

-- Runs at start (every option counts as changed) and whenever options change.
function configure(changed)
  if changed.hosts then
    blocked = {}
    for _, host in ipairs(options.hosts) do
      blocked[host] = true
    end
  end
end

commands = {
  blocked = { run = function() return table.concat(options.hosts, ",") end,
              help = "the hosts being blocked" },
}

return {
  request = function(flow)
    if blocked[flow.request.host] then
      flow:reply(403, "blocked\n", { ["Content-Type"] = "text/plain" })
    end
  end,
}
