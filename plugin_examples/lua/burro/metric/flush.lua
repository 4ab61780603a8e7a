-- At shutdown and every --script-flush-interval: log the totals so far.
local counts = kv.list(METRIC_PREFIX)
local total, hosts = 0, {}
for key, n in pairs(counts) do
  local host = key:sub(#METRIC_PREFIX + 1)
  hosts[#hosts + 1] = host .. "=" .. n
  total = total + tonumber(n)
end
table.sort(hosts)
kv.set("metric:last_flush", opts.session)
log.info("metric flush", { session = opts.session, total = total, hosts = table.concat(hosts, ",") })
