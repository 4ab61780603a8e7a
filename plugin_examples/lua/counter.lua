-- Roxy's counter extension: an object in `Extensions` keeps state in `self`
-- (one VM per worker, so the count is per worker).
--   proxy --script ./plugin_examples/lua/counter.lua
local Counter = {}
Counter.__index = Counter

function Counter:start()
  self.count = 0
  print("counter started")
end

function Counter:request(flow)
  self.count = self.count + 1
  flow.request.headers["x-request-count"] = self.count
  print(string.format("seen %d requests", self.count))
end

Extensions = { setmetatable({}, Counter) }
