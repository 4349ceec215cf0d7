-- One adaptive concurrency limit, shared by the fleet: a worker reports the calls it saw finish
-- and reads the limit back; the first report after an interval moves the limit (AIMD, as
-- resilience/engine/concurrency.py's aimd_step: the two are tested against each other).
-- KEYS[1]  the limit's hash: limit, calls and slow calls so far this interval, interval start (ms)
-- ARGV     calls, slow, floor, ceiling, interval ms, slow share, decrease
-- Reply    the limit now
local key = KEYS[1]
local calls, slow = tonumber(ARGV[1]), tonumber(ARGV[2])
local floor, ceiling = tonumber(ARGV[3]), tonumber(ARGV[4])
local interval, share, decrease = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)

local state = redis.call('HMGET', key, 'limit', 'calls', 'slow', 'at')
local limit = tonumber(state[1]) or ceiling
local seen, seen_slow = (tonumber(state[2]) or 0) + calls, (tonumber(state[3]) or 0) + slow
local at = tonumber(state[4]) or now
if now - at >= interval then
  if seen > 0 then
    if seen_slow > share * seen then
      limit = math.floor(limit * decrease)
    else
      limit = limit + 1
    end
  end
  seen, seen_slow, at = 0, 0, now
end
limit = math.max(floor, math.min(ceiling, limit))
redis.call('HSET', key, 'limit', limit, 'calls', seen, 'slow', seen_slow, 'at', at)
redis.call('PEXPIRE', key, 3600000)
return limit
