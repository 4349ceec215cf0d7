-- Rate-limit core: decides a set of limit specs atomically inside one script.
--
-- Only `local function`s and local constants live here, so that another library and a main chunk
-- can be concatenated after this file into one script (limiter_lib .. breaker_lib .. main).
-- The contract is written down in resilience/engine/limiter.py; resilience/stores/memory_limiter.py is
-- the same algorithm in Python and must stay in step with this file, line for line.
--
-- Units: `now` and every time below are microseconds since the epoch. Lua numbers are doubles,
-- which hold integer microseconds exactly (2^53 us is year 2255). Numbers passed to redis.call
-- are formatted here, because Redis would print large numbers in exponent notation.
--
-- Bounds: RL_MAX_LIMIT, RL_MAX_PERIOD, RL_MAX_BURST, RL_SLIDING_LOG_MAX and RL_MAX_CAPACITY are
-- defined ahead of this file from resilience/engine/limiter.py (stores/redis_limiter.py, limiter_lib()).
-- A spec number outside them is clamped to the nearest bound and a value that is not a number is
-- refused with an error reply: nothing a caller passes makes the script fail half-way.

-- Float noise allowance for GCRA, in microseconds (limiter.GCRA_SLACK_US).
local RL_SLACK = 0.001

local function rl_int(x)
  return string.format('%.0f', x)
end

local function rl_ms(us)
  -- Expiry in whole milliseconds, rounded up: a key must outlive the state it carries.
  local ms = math.ceil(us / 1000)
  if ms < 1 then ms = 1 end
  return rl_int(ms)
end

-- Run a read command; a key holding another type (the policy switched algorithm) reads as empty.
local function rl_read(state, ...)
  local reply = redis.pcall(...)
  if type(reply) == 'table' and reply.err then
    if string.find(reply.err, 'WRONGTYPE', 1, true) then
      state.stale = true
      return nil
    end
    error(reply)
  end
  return reply
end

-- State is "<TAT whole us>.<9-digit fraction of a us>@<last write us>". The fraction exists
-- because a plain double at epoch magnitude would round every write by up to 0.125 us, and a long
-- burst would drift by that many times. The write time lets a shrunken capacity apply as if it
-- had been in force at the last admission, so nobody waits longer than the new burst refills.
local function rl_tat_encode(now, diff)
  local whole = math.floor(diff)
  local nano = math.floor((diff - whole) * 1e9 + 0.5)
  if nano >= 1e9 then
    whole = whole + 1
    nano = 0
  end
  return string.format('%s.%09d@%s', rl_int(now + whole), nano, rl_int(now))
end

-- Return TAT - now for a stored state, capped by the capacity `tau` counted from the last write.
-- A state that cannot be read (written by hand) counts as an empty bucket.
local function rl_tat_diff(raw, now, tau)
  local dot = string.find(raw, '.', 1, true)
  local at = string.find(raw, '@', 1, true)
  if not dot or not at then return 0 end
  local whole = tonumber(string.sub(raw, 1, dot - 1))
  local nano = tonumber(string.sub(raw, dot + 1, at - 1))
  local written = tonumber(string.sub(raw, at + 1))
  if not whole or not nano or not written then return 0 end
  local diff = (whole - now) + nano / 1e9
  local cap = (written - now) + tau
  if diff > cap then diff = cap end
  if diff ~= diff then return 0 end
  return diff
end

local function rl_gcra_peek(now, spec, cost, st)
  local t = spec.period * 1e6 / spec.limit
  local tau = spec.burst * t
  local raw = rl_read(st, 'GET', spec.key)
  local diff = 0
  if raw then diff = rl_tat_diff(raw, now, tau) end
  if diff < 0 then diff = 0 end
  -- Also clamp to the capacity now, in case the clock stepped back since the last write.
  if diff > tau then diff = tau end
  st.t = t
  st.tau = tau
  st.cur = diff
  st.new = diff + cost * t
  st.capacity = spec.burst
  st.allowed = st.new <= tau + RL_SLACK
  if not st.allowed then
    if cost > spec.burst then
      st.retry = spec.period * 1e6
    else
      st.retry = math.ceil(st.new - tau - RL_SLACK)
    end
  end
end

local function rl_gcra_report(st, consumed)
  local after = st.cur
  if consumed then after = st.new end
  local remaining = math.floor((st.tau + RL_SLACK - after) / st.t)
  if remaining > st.capacity then remaining = st.capacity end
  return remaining, math.ceil(after - RL_SLACK)
end

-- Each commit returns a receipt: what rl_refund needs to give the consumption back.
local function rl_gcra_commit(now, spec, st)
  redis.call('SET', spec.key, rl_tat_encode(now, st.new), 'PX', rl_ms(st.new))
  return string.format('%.9f', st.new - st.cur)
end

local function rl_fixed_peek(now, spec, cost, st)
  local period = spec.period * 1e6
  local start = math.floor(now / period) * period
  local count = 0
  local raw = rl_read(st, 'HMGET', spec.key, 's', 'n')
  if raw and raw[1] and tonumber(raw[1]) == start then count = tonumber(raw[2]) or 0 end
  st.capacity = spec.limit
  st.count = count
  st.cost = cost
  st.left = start + period - now
  st.allowed = count + cost <= spec.limit
  if not st.allowed then
    if cost > spec.limit then st.retry = period else st.retry = st.left end
  end
  st.start = start
end

local function rl_fixed_report(st, consumed)
  local after = st.count
  if consumed then after = after + st.cost end
  local reset = 0
  if after > 0 then reset = st.left end
  return st.capacity - after, reset
end

local function rl_fixed_commit(now, spec, st)
  if st.stale then redis.call('DEL', spec.key) end
  redis.call('HSET', spec.key, 's', rl_int(st.start), 'n', rl_int(st.count + st.cost))
  redis.call('PEXPIRE', spec.key, rl_ms(st.left))
  return rl_int(st.start)
end

local function rl_sliding_peek(now, spec, cost, st)
  local period = spec.period * 1e6
  -- The window is (now - period, now]; later entries (a clock that stepped back) count too.
  local low = '(' .. rl_int(now - period)
  local count = rl_read(st, 'ZCOUNT', spec.key, low, '+inf') or 0
  st.capacity = spec.limit
  st.count = count
  st.cost = cost
  st.period = period
  st.low = now - period
  st.newest = nil
  if count > 0 then
    local top = redis.call('ZRANGE', spec.key, -1, -1, 'WITHSCORES')
    st.newest = tonumber(top[2])
  end
  st.allowed = count + cost <= spec.limit
  if not st.allowed then
    if cost > spec.limit then
      st.retry = period
    else
      -- Admission needs count + cost - limit of the oldest entries to have left the window.
      local oldest = redis.call('ZRANGEBYSCORE', spec.key, low, '+inf', 'WITHSCORES', 'LIMIT',
        rl_int(count + cost - spec.limit - 1), '1')
      st.retry = tonumber(oldest[2]) + period - now
    end
  end
end

local function rl_sliding_newest(now, st, consumed)
  local newest = st.newest
  if consumed and (newest == nil or newest < now) then newest = now end
  return newest
end

local function rl_sliding_report(now, st, consumed)
  local after = st.count
  if consumed then after = after + st.cost end
  local reset = 0
  local newest = rl_sliding_newest(now, st, consumed)
  if after > 0 then reset = newest + st.period - now end
  return st.capacity - after, reset
end

local function rl_sliding_commit(now, spec, st)
  if st.stale then redis.call('DEL', spec.key) end
  redis.call('ZREMRANGEBYSCORE', spec.key, '-inf', rl_int(st.low))
  -- Members must be unique: number them after the entries already logged at this microsecond.
  local stamp = rl_int(now)
  local base = redis.call('ZCOUNT', spec.key, stamp, stamp)
  -- Batches of 500 members keep unpack() far below Lua's stack limit for a large cost.
  local i = 0
  while i < st.cost do
    local args = {}
    for j = i, math.min(i + 500, st.cost) - 1 do
      args[#args + 1] = stamp
      args[#args + 1] = stamp .. ':' .. rl_int(base + j)
    end
    redis.call('ZADD', spec.key, unpack(args))
    i = i + 500
  end
  local newest = rl_sliding_newest(now, st, true)
  redis.call('PEXPIRE', spec.key, rl_ms(newest + st.period - now))
  return stamp .. ':' .. rl_int(base)
end

-- Decide `specs` at `now` (us) and, when `consume` is true and every enforcing spec admits, take
-- `cost` from each spec that admits. Each spec is a table {key, algorithm, limit, period (s),
-- burst (nil = limit), enforce (boolean)}. Returns a list of {allowed (boolean), limit, remaining,
-- reset_after_us, retry_after_us} in spec order, and whether the request is admitted.
local function rl_hit(now, specs, cost, consume)
  local states = {}
  local admitted = true
  for i, spec in ipairs(specs) do
    local st = {stale = false, retry = 0}
    if spec.burst == nil then spec.burst = spec.limit end
    if spec.limit <= 0 then
      st.algorithm = 'zero'
      st.allowed = false
      st.retry = spec.period * 1e6
    elseif spec.algorithm == 'token_bucket' then
      rl_gcra_peek(now, spec, cost, st)
    elseif spec.algorithm == 'fixed_window' then
      rl_fixed_peek(now, spec, cost, st)
    elseif spec.algorithm == 'sliding_window' then
      rl_sliding_peek(now, spec, cost, st)
    else
      error('unknown rate-limit algorithm: ' .. tostring(spec.algorithm))
    end
    st.algorithm = st.algorithm or spec.algorithm
    states[i] = st
    if spec.enforce and not st.allowed then admitted = false end
  end

  local results = {}
  for i, spec in ipairs(specs) do
    local st = states[i]
    local consumed = consume and admitted and st.allowed
    local quota, remaining, reset, receipt = spec.limit, 0, 0, ''
    if st.algorithm == 'zero' then
      reset = spec.period * 1e6
    elseif st.algorithm == 'token_bucket' then
      if consumed then receipt = rl_gcra_commit(now, spec, st) end
      quota = spec.burst
      remaining, reset = rl_gcra_report(st, consumed)
    elseif st.algorithm == 'fixed_window' then
      if consumed then receipt = rl_fixed_commit(now, spec, st) end
      remaining, reset = rl_fixed_report(st, consumed)
    else
      if consumed then receipt = rl_sliding_commit(now, spec, st) end
      remaining, reset = rl_sliding_report(now, st, consumed)
    end
    if remaining < 0 then remaining = 0 end
    if reset < 0 then reset = 0 end
    local retry = 0
    if not st.allowed then retry = st.retry end
    results[i] = {st.allowed, quota, remaining, reset, retry}
    results[i].receipt = receipt  -- '' when nothing was consumed
  end
  return results, admitted
end

-- Give back what a hit consumed in `spec`, given the receipt its commit returned and the cost.
-- Used on a Redis Cluster when another slot refused the same request (stores/cluster.py), so a
-- refused request still consumes nothing. Requests admitted meanwhile keep what they took:
-- a token bucket moves its TAT back by the emission it was given, a fixed window takes the cost
-- off its count if the window has not turned, a sliding log removes the entries it added.
-- Returns 1 if something was given back, 0 if it had already left on its own.
local function rl_refund(now, spec, cost, receipt)
  if spec.algorithm == 'token_bucket' then
    local raw = redis.pcall('GET', spec.key)
    if type(raw) ~= 'string' then return 0 end
    if spec.burst == nil then spec.burst = spec.limit end
    if spec.limit <= 0 then return 0 end
    local t = spec.period * 1e6 / spec.limit
    local diff = rl_tat_diff(raw, now, spec.burst * t) - tonumber(receipt)
    if diff <= 0 then
      redis.call('DEL', spec.key)  -- a full bucket: the same as no state
    else
      redis.call('SET', spec.key, rl_tat_encode(now, diff), 'PX', rl_ms(diff))
    end
    return 1
  elseif spec.algorithm == 'fixed_window' then
    local raw = redis.pcall('HMGET', spec.key, 's', 'n')
    if type(raw) ~= 'table' or raw.err or raw[1] ~= receipt then return 0 end
    local left = (tonumber(raw[2]) or 0) - cost
    if left < 0 then left = 0 end
    redis.call('HSET', spec.key, 'n', rl_int(left))
    return 1
  end
  local colon = string.find(receipt, ':', 1, true)
  local stamp, base = string.sub(receipt, 1, colon - 1), tonumber(string.sub(receipt, colon + 1))
  local members = {}
  for j = 0, cost - 1 do members[#members + 1] = stamp .. ':' .. rl_int(base + j) end
  local removed = redis.pcall('ZREM', spec.key, unpack(members))
  if type(removed) ~= 'number' or removed == 0 then return 0 end
  return 1
end

-- Refuse the script call with an error reply (not a Lua runtime error half-way through it).
local function rl_refuse(message)
  error({err = message})
end

-- Return argv[at] as a number, or refuse the call when it is not one.
local function rl_number(argv, at, what, i)
  local value = tonumber(argv[at])
  if value == nil or value ~= value then
    rl_refuse('rate-limit spec ' .. i .. ': ' .. what .. ' is not a number: ' .. tostring(argv[at]))
  end
  return value
end

-- Return value moved into [low, high] and rounded down to a whole number.
local function rl_bounded(value, low, high)
  if value < low then value = low end
  if value > high then value = high end
  return math.floor(value)
end

-- Read n specs from argv: five values per spec (algorithm, limit, period, burst ('' = limit),
-- enforce '1'/'0'), the first spec's right after argv[offset]; keys[i] is spec i's state key.
-- Numbers out of bounds are clamped as resilience.engine.limiter.validate() would refuse them: limit to
-- [0, RL_MAX_LIMIT] (a sliding window's to RL_SLIDING_LOG_MAX), period to [1, RL_MAX_PERIOD],
-- burst to [1, RL_MAX_BURST] and to what refills within RL_MAX_CAPACITY seconds.
local function rl_parse_specs(keys, argv, n, offset)
  local specs = {}
  for i = 1, n do
    local base = offset + (i - 1) * 5
    local algorithm = argv[base + 1]
    if algorithm ~= 'token_bucket' and algorithm ~= 'fixed_window' and algorithm ~= 'sliding_window' then
      rl_refuse('rate-limit spec ' .. i .. ': unknown algorithm: ' .. tostring(algorithm))
    end
    local limit = rl_bounded(rl_number(argv, base + 2, 'limit', i), 0, RL_MAX_LIMIT)
    if algorithm == 'sliding_window' and limit > RL_SLIDING_LOG_MAX then limit = RL_SLIDING_LOG_MAX end
    local period = rl_bounded(rl_number(argv, base + 3, 'period', i), 1, RL_MAX_PERIOD)
    local burst = nil
    if argv[base + 4] ~= '' then
      burst = rl_bounded(rl_number(argv, base + 4, 'burst', i), 1, RL_MAX_BURST)
      -- Beyond rounding only: validate() compares exact integers, doubles may be a hair off.
      local most = RL_MAX_CAPACITY * limit / period
      if limit > 0 and burst > most + 1 then burst = math.max(1, math.floor(most)) end
    end
    specs[i] = {
      key = keys[i],
      algorithm = algorithm,
      limit = limit,
      period = period,
      burst = burst,
      enforce = argv[base + 5] == '1',
    }
  end
  return specs
end

-- Return the policy-version counter; a key that is not a number (written by hand) reads as 0.
local function rl_version(key)
  local raw = redis.pcall('GET', key)
  if type(raw) == 'table' then return 0 end
  return tonumber(raw) or 0
end

-- Append five integers per result to reply: allowed (0/1), limit, remaining, reset_after_us,
-- retry_after_us. Times are whole microseconds, so integer replies lose nothing.
local function rl_reply(reply, results)
  for _, r in ipairs(results) do
    local allowed = 0
    if r[1] then allowed = 1 end
    reply[#reply + 1] = allowed
    reply[#reply + 1] = r[2]
    reply[#reply + 1] = r[3]
    reply[#reply + 1] = r[4]
    reply[#reply + 1] = r[5]
  end
  return reply
end
