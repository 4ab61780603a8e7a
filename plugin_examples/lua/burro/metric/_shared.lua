-- Loaded before the hooks; its globals are seen by every hook of this directory.
-- Run with: proxy --plugins plugin_examples/lua/burro/metric/ [--kv-file metric.json]
METRIC_PREFIX = "metric:requests:"

-- Adds one to the counter of `host` in the kv store (shared by every worker). `kv.incr`
-- adds under the store's lock: workers counting at once never lose a count.
function count_request(host)
  kv.incr(METRIC_PREFIX .. (host or "-"))
end
