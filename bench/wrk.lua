-- The mix bench/lib.py writes to the file named after "--", one request a line, sent in turn on every connection:
-- "METHOD<TAB>PATH<TAB>BODY<TAB>Header: value<TAB>..."; done() prints the JSON line bench/lib.py reads.
local mix, n = {}, 0

function init(args)
  for line in io.lines(args[1]) do
    local method, path, body, rest = line:match("^([^\t]*)\t([^\t]*)\t([^\t]*)(.*)$")
    local headers = {}
    for name, value in rest:gmatch("\t([^:\t]+):%s*([^\t]*)") do headers[name] = value end
    mix[#mix + 1] = wrk.format(method, path, headers, body ~= "" and body or nil)
  end
end

function request()
  n = n % #mix + 1
  return mix[n]
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('JSON {"requests": %d, "duration_us": %d, "bad_status": %d, "socket_errors": %d, '
    .. '"mean_us": %.1f, "p50_us": %d, "p99_us": %d, "max_us": %d}\n', summary.requests, summary.duration,
    e.status, e.connect + e.read + e.write + e.timeout, latency.mean, latency:percentile(50),
    latency:percentile(99), latency.max))
end
