-- The middleware's one round trip: rate limits, breaker admission and a first try for each
-- bulkhead's slot in one atomic step.
-- Loaded as limiter_lib .. [breaker_lib ..] concurrency_lib .. admit_main.
--
-- KEYS[1..n]          one state key per limit spec
-- KEYS[n + 1]         the policy-version counter
-- KEYS[n + 2 ..]      two per breaker: state hash, window key
-- then                three per bulkhead: slots, queue, deadlines (concurrency_lib)
-- then, with stats    the minute's counters hash, and one sorted set of limited values per spec
-- ARGV[1]             now in integer microseconds, or '' for Redis TIME
-- ARGV[2]             n, the number of limit specs
-- ARGV[3 .. 2 + 5n]   five per spec: algorithm, limit, period, burst ('' = limit), enforce
-- then                m, the number of breakers, and seven config values per breaker
-- then                '1' to keep stats ('' = none) and one stats label per spec (none without stats)
-- then                c, the number of bulkheads (absent = 0), and five values per bulkhead: lease id,
--                     max in flight, lease ms, ms it may wait, force ('1': dry run)
--
-- Stats for the staff dashboard ride on this same round trip: per minute, a hash of
-- "<label>:<outcome>" counters (a = allowed, l = limited, d = dry run would limit) and a sorted
-- set per policy of the values that were limited, both expiring after 20 minutes. Their names
-- come from stores/keys.py, declared like every other key. On a cluster they live in other slots
-- than the limits: the cluster admission counts in process instead (stores/cluster.py).
--
-- Breakers are asked only when every enforcing limit admits, so a request refused by a limit
-- never takes a half-open trial slot. They are asked in order and the first refusal stops the
-- walk: a trial slot taken by an earlier breaker of the same request is then left to its lease
-- (accepted: one route rarely sits under two breakers).
--
-- Bulkheads are tried only when the limits and every breaker admit, so a refused request never
-- takes a slot; in order, stopping at the first that has no slot free (the caller waits for that
-- one, if it may, and tries the rest on its own).
--
-- Reply: {admitted, version, 5 integers per spec (as limiter_main), m_asked, then per asked
-- breaker: permit, transitions (as breaker_main's allow), c_asked, then per asked bulkhead the
-- four integers of cc_acquire}.

local n = tonumber(ARGV[2])
local now_us
if ARGV[1] ~= '' then
  now_us = tonumber(ARGV[1])
else
  local time = redis.call('TIME')
  now_us = tonumber(time[1]) * 1e6 + tonumber(time[2])
end

local specs = rl_parse_specs(KEYS, ARGV, n, 2)

local results, admitted = {}, true
if n > 0 then
  results, admitted = rl_hit(now_us, specs, 1, true)
end

local reply = {0, rl_version(KEYS[n + 1])}
if admitted then reply[1] = 1 end
rl_reply(reply, results)

local m_at = 3 + n * 5
local m = tonumber(ARGV[m_at])

local stats_at = m_at + 1 + m * 7
local stats_on = ARGV[stats_at] == '1'
local c_at = stats_at + 1
if stats_on then c_at = c_at + n end
local c = tonumber(ARGV[c_at]) or 0
if stats_on and n > 0 then
  local k_stats = n + 1 + m * 2 + c * 3 + 1
  local counts = KEYS[k_stats]
  for i, r in ipairs(results) do
    local label = ARGV[stats_at + i]
    local outcome = 'a'
    if not r[1] then
      if specs[i].enforce then outcome = 'l' else outcome = 'd' end
    end
    redis.call('HINCRBY', counts, label .. ':' .. outcome, 1)
    if outcome == 'l' then
      -- The counted value is what follows the policy part of the key: "...rl:{<id>.<epoch>:<value>}".
      local key = specs[i].key
      local colon = string.find(key, ':', string.find(key, '{', 1, true), true)
      local value = string.sub(key, colon + 1, -2)
      -- One sorted set per policy and minute: the dashboard sums a policy's sets exactly,
      -- and a busy policy's keys never crowd out a quiet one's.
      redis.call('ZINCRBY', KEYS[k_stats + i], 1, value)
      redis.call('EXPIRE', KEYS[k_stats + i], 1200)
    end
  end
  redis.call('EXPIRE', counts, 1200)
end
local asked = {}
local permitted = admitted
if admitted then
  local now_s = now_us / 1000000
  for j = 1, m do
    local permit, trans = cb_allow(now_s, KEYS[n + 1 + (j - 1) * 2 + 1], cb_config(ARGV, m_at + 1 + (j - 1) * 7))
    asked[#asked + 1] = {permit, trans}
    if permit[1] == 0 then
      permitted = false
      break
    end
  end
end
reply[#reply + 1] = #asked
for _, a in ipairs(asked) do
  reply[#reply + 1] = a
end

local slots = {}
if permitted then
  local k0 = n + 1 + m * 2
  for j = 1, c do
    local k, a = k0 + (j - 1) * 3, c_at + 1 + (j - 1) * 5
    local got, err = cc_acquire(now_us, KEYS[k + 1], KEYS[k + 2], KEYS[k + 3], ARGV[a], ARGV[a + 1], ARGV[a + 2],
      ARGV[a + 3], ARGV[a + 4] == '1')
    if got == nil then return redis.error_reply(err) end
    slots[#slots + 1] = got
    if got[1] == 0 then break end
  end
end
reply[#reply + 1] = #slots
for _, got in ipairs(slots) do
  reply[#reply + 1] = got
end
return reply
