-- The rate limits of one request that live in one Redis Cluster slot, decided together; or the
-- refund of what they consumed when another slot refused the request (stores/cluster.py).
-- Loaded as limiter_lib .. cluster_main. Every key is in one slot (stores/keys.py).
--
-- KEYS[1..n]          one state key per limit spec
-- ARGV[1]             'hit' or 'refund'
-- hit:    ARGV[2]     now in integer microseconds, or '' for this node's Redis TIME
--         ARGV[3]     n, then five per spec: algorithm, limit, period, burst ('' = limit), enforce
--         Reply: {admitted, 5 integers per spec (as limiter_main), then one receipt per spec
--         ('' when that spec consumed nothing)}
-- refund: ARGV[2]     n, then six per spec: the five of a hit and its receipt ('' = skip)
--         Reply: how many specs were given something back

local time = redis.call('TIME')
local node_now = tonumber(time[1]) * 1e6 + tonumber(time[2])

if ARGV[1] == 'refund' then
  local n = tonumber(ARGV[2])
  local given = 0
  for i = 1, n do
    local base = 2 + (i - 1) * 6
    local receipt = ARGV[base + 6]
    if receipt ~= '' then
      local spec = rl_parse_specs({KEYS[i]}, ARGV, 1, base)[1]
      given = given + rl_refund(node_now, spec, 1, receipt)
    end
  end
  return given
end

local now = node_now
if ARGV[2] ~= '' then now = tonumber(ARGV[2]) end
local n = tonumber(ARGV[3])
local specs = rl_parse_specs(KEYS, ARGV, n, 3)
local results, admitted = rl_hit(now, specs, 1, true)
local reply = {0}
if admitted then reply[1] = 1 end
rl_reply(reply, results)
for _, r in ipairs(results) do
  reply[#reply + 1] = r.receipt
end
return reply
