-- Entry point of the limiter script; limiter_lib.lua is prepended to this file.
--
-- KEYS[1..n]  one state key per spec; KEYS[n + 1] the policy-version counter.
-- ARGV[1]     now in integer microseconds, or '' to use Redis TIME (the one clock of the fleet;
--             the override exists for tests that drive a fake clock).
-- ARGV[2]     cost; ARGV[3] '1' to consume, '0' to only test.
-- ARGV[4..]   five per spec: algorithm, limit, period (s), burst ('' = limit), enforce ('1'/'0').
--
-- Reply: {admitted (0/1), version, then five integers per spec: allowed (0/1), limit, remaining,
-- reset_after_us, retry_after_us}. Times are whole microseconds, so integer replies lose nothing.

local n = #KEYS - 1
local now
if ARGV[1] ~= '' then
  now = tonumber(ARGV[1])
else
  local time = redis.call('TIME')
  now = tonumber(time[1]) * 1e6 + tonumber(time[2])
end
local cost = rl_bounded(rl_number(ARGV, 2, 'cost', 0), 1, RL_MAX_LIMIT)
local consume = ARGV[3] == '1'

local specs = rl_parse_specs(KEYS, ARGV, n, 3)

local results, admitted = rl_hit(now, specs, cost, consume)

local reply = {0, rl_version(KEYS[n + 1])}
if admitted then reply[1] = 1 end
rl_reply(reply, results)
return reply
