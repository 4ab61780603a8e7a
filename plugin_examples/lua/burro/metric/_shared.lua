-- Loaded before the hooks; its globals are seen by every hook of this directory.
-- Run with: proxy --plugins plugin_examples/lua/burro/metric/ [--kv-file metric.json]
METRIC_PREFIX = "metric:requests:"

-- Adds one to the counter of `host` in the kv store (shared by every worker; kv has no
-- atomic add, so with several workers two simultaneous increments may count once).
function count_request(host)
  local key = METRIC_PREFIX .. (host or "-")
  local n = tonumber((kv.get(key))) or 0
  kv.set(key, n + 1)
end
