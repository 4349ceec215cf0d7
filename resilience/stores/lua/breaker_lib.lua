-- Circuit-breaker core: only local functions and constants, so any script can be composed as
--   limiter_lib .. breaker_lib .. some_main
-- It mirrors resilience/engine/breaker.py step for step (the tests run both and compare every reply);
-- the semantics are documented in that module's docstring.
--
-- State of one breaker: hash KEY with fields
--   st  state ("closed", "open", "half-open", "forced-open", "forced-closed"; absent = closed)
--   gen generation            cf  consecutive failures
--   oa  opened_at ("" = none) ou  open_until (open period fixed at trip time)
--   ti  trial permits issued  ts  trial successes       lu  trial lease end
--   wk  window signature      wc  window calls          wf  window failures
--   wlo lowest bucket second of a time window ("" = none)
-- and KEY .. ":w": a list of "0"/"1" outcomes (count window) or a hash of per-second buckets
-- "<sec>c" / "<sec>f" (time window). The caller must declare both keys in KEYS; they share KEY's hash
-- tag, so they live in one slot on a sharded Redis.
-- Floats go in and out as strings (Redis truncates Lua numbers in replies); '%.17g' round-trips them.
--
-- Bounds: CB_MAX_THRESHOLD, CB_MAX_COUNT_WINDOW, CB_MAX_TIME_WINDOW, CB_MAX_MINIMUM_CALLS,
-- CB_MAX_OPEN_SECONDS and CB_MAX_HALF_OPEN are defined ahead of this file from resilience/engine/breaker.py
-- (stores/redis_breaker.py, BREAKER_LIB_LUA). A config number outside them is clamped to the
-- nearest bound and a value that is not a number is refused with an error reply; a state field
-- that cannot be read (written by hand) reads as a closed breaker's.

-- A lease never shorter than 10 s: a short open period must not expire trials still in flight.
local CB_TRIAL_LEASE_FLOOR = 10
-- A CLOSED breaker with no failure on record loses nothing worth keeping after an idle hour.
local CB_IDLE_TTL = 3600
-- Anything with failures on record, or OPEN beyond its period, is kept for a day of inactivity.
local CB_RETAIN_TTL = 86400

local function cb_fmt(x)
  return string.format('%.17g', x)
end

local function cb_clock(arg)
  if arg ~= nil and arg ~= '' then
    return tonumber(arg)
  end
  -- The server's clock is the one clock of the cluster: app servers' skew cannot move a breaker.
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1000000
end

-- Return argv[at] as a number moved into [low, high], or refuse the call when it is not a number.
local function cb_number(argv, at, what, low, high)
  local value = tonumber(argv[at])
  if value == nil or value ~= value then
    error({err = 'breaker config: ' .. what .. ' is not a number: ' .. tostring(argv[at])})
  end
  if value < low then value = low end
  if value > high then value = high end
  return value
end

-- Read the 7 config values that start at argv[i] (order of resilience.stores.redis_breaker.config_args),
-- clamped to the bounds BreakerConfig.validate() refuses beyond.
local function cb_config(argv, i)
  local wkind = argv[i + 3]
  local wmax = CB_MAX_COUNT_WINDOW
  if wkind == 'time' then
    wmax = CB_MAX_TIME_WINDOW
  elseif wkind ~= 'count' then
    error({err = 'breaker config: unknown window kind: ' .. tostring(wkind)})
  end
  return {
    threshold = math.floor(cb_number(argv, i, 'failure_threshold', 0, CB_MAX_THRESHOLD)),
    rate = cb_number(argv, i + 1, 'failure_rate', 0, 100),
    wsize = math.floor(cb_number(argv, i + 2, 'window_size', 1, wmax)),
    wkind = wkind,
    min_calls = math.floor(cb_number(argv, i + 4, 'minimum_calls', 0, CB_MAX_MINIMUM_CALLS)),
    open_s = cb_number(argv, i + 5, 'open_seconds', 0.001, CB_MAX_OPEN_SECONDS),
    k = math.floor(cb_number(argv, i + 6, 'half_open_max_calls', 1, CB_MAX_HALF_OPEN)),
  }
end

local CB_STATES = {
  ['closed'] = true, ['open'] = true, ['half-open'] = true, ['forced-open'] = true, ['forced-closed'] = true,
}

local function cb_window_key(key)
  return key .. ':w'
end

local function cb_signature(cfg)
  return cfg.wkind .. ':' .. cfg.wsize
end

local function cb_trial_lease(cfg)
  return math.max(cfg.open_s, CB_TRIAL_LEASE_FLOOR)
end

local function cb_ready_to_trip(cfg, cf, wc, wf)
  if cfg.threshold > 0 and cf >= cfg.threshold then
    return true
  end
  local min_calls = cfg.min_calls
  if cfg.wkind == 'count' then
    min_calls = math.min(min_calls, cfg.wsize)
  end
  return cfg.rate > 0 and wc > 0 and wc >= min_calls and wf * 100 >= cfg.rate * wc
end

local function cb_load(key)
  local v = redis.call('HMGET', key, 'st', 'gen', 'cf', 'oa', 'ou', 'ti', 'ts', 'lu', 'wk', 'wc', 'wf', 'wlo')
  local st = v[1]
  if not CB_STATES[st] then st = 'closed' end
  return {
    st = st,
    gen = tonumber(v[2]) or 0,
    cf = tonumber(v[3]) or 0,
    oa = tonumber(v[4]),
    ou = tonumber(v[5]) or 0,
    ti = tonumber(v[6]) or 0,
    ts = tonumber(v[7]) or 0,
    lu = tonumber(v[8]) or 0,
    wk = v[9] or '',
    wc = tonumber(v[10]) or 0,
    wf = tonumber(v[11]) or 0,
    wlo = tonumber(v[12]),
    wclear = false,
  }
end

local function cb_save(now, key, s)
  local wkey = cb_window_key(key)
  if s.wclear then
    redis.call('DEL', wkey)
  end
  redis.call('HSET', key, 'st', s.st, 'gen', s.gen, 'cf', s.cf, 'oa', s.oa and cb_fmt(s.oa) or '',
    'ou', cb_fmt(s.ou), 'ti', s.ti, 'ts', s.ts, 'lu', cb_fmt(s.lu), 'wk', s.wk, 'wc', s.wc, 'wf', s.wf,
    'wlo', s.wlo or '')
  if s.st == 'forced-open' or s.st == 'forced-closed' then
    -- An operator's decision holds until released, however long nobody looks.
    redis.call('PERSIST', key)
    redis.call('PERSIST', wkey)
    return
  end
  local ttl = CB_RETAIN_TTL
  if s.st == 'open' then
    ttl = (s.ou - now) + CB_RETAIN_TTL
  elseif s.st == 'half-open' then
    ttl = math.max(s.lu - now, 0) + CB_RETAIN_TTL
  elseif s.cf == 0 and s.wf == 0 then
    -- Expiring restarts the generation at 0; a permit that old reporting back is not a real risk.
    ttl = CB_IDLE_TTL
  end
  local ms = math.max(1, math.ceil(ttl * 1000))
  redis.call('PEXPIRE', key, ms)
  redis.call('PEXPIRE', wkey, ms)
end

-- Enter state `to` with a new generation and every counter cleared (window dropped at save).
local function cb_change(s, to)
  s.gen = s.gen + 1
  s.st = to
  s.cf = 0
  s.ti = 0
  s.ts = 0
  s.lu = 0
  s.wk = ''
  s.wc = 0
  s.wf = 0
  s.wlo = nil
  s.wclear = true
  if to ~= 'open' and to ~= 'half-open' then
    s.oa = nil
    s.ou = 0
  end
end

local function cb_move(now, s, to, trans)
  trans[#trans + 1] = {s.st, to, s.gen + 1, cb_fmt(now)}
  cb_change(s, to)
end

local function cb_trip(now, s, cfg, trans)
  cb_move(now, s, 'open', trans)
  s.oa = now
  s.ou = now + cfg.open_s
end

-- Turn OPEN into HALF_OPEN once the open period is over; return true if it did.
local function cb_lazy(now, s, trans)
  if s.st == 'open' and now >= s.ou then
    cb_move(now, s, 'half-open', trans)
    return true
  end
  return false
end

-- Start a fresh half-open batch when the current batch's lease ran out; return true if it did.
local function cb_release_abandoned(now, s)
  if s.st == 'half-open' and s.ti > 0 and now >= s.lu then
    -- New generation so that late outcomes from the abandoned batch are ignored.
    s.gen = s.gen + 1
    s.ti = 0
    s.ts = 0
    s.lu = 0
    return true
  end
  return false
end

-- Add n outcomes (all failures or all successes) to the window.
local function cb_window_add(now, key, s, cfg, failed, n)
  local wkey = cb_window_key(key)
  local sig = cb_signature(cfg)
  if s.wk ~= sig then
    redis.call('DEL', wkey)
    s.wk = sig
    s.wc = 0
    s.wf = 0
    s.wlo = nil
  end
  if cfg.wkind == 'count' then
    -- More than the window holds leaves the same window as exactly as many as it holds.
    n = math.min(n, cfg.wsize)
    local mark = failed and '1' or '0'
    for _ = 1, n do
      redis.call('RPUSH', wkey, mark)
    end
    s.wc = s.wc + n
    if failed then
      s.wf = s.wf + n
    end
    while s.wc > cfg.wsize do
      local old = redis.call('LPOP', wkey)
      if not old then
        -- The list vanished under the counts (deleted by hand): start counting afresh.
        s.wc = 0
        s.wf = 0
        break
      end
      s.wc = s.wc - 1
      if old == '1' then
        s.wf = s.wf - 1
      end
    end
    return
  end
  local second = math.floor(now)
  local cutoff = second - cfg.wsize + 1
  if s.wlo == nil then
    s.wlo = cutoff
  elseif s.wlo < cutoff then
    if cutoff - s.wlo >= cfg.wsize then
      -- Every bucket lies in [wlo, wlo + size - 1], so all of them are out: drop in one go.
      redis.call('DEL', wkey)
      s.wc = 0
      s.wf = 0
    else
      -- At most size - 1 steps, and each second is evicted once: amortised O(1) per call.
      for b = s.wlo, cutoff - 1 do
        local v = redis.call('HMGET', wkey, b .. 'c', b .. 'f')
        s.wc = s.wc - (tonumber(v[1]) or 0)
        s.wf = s.wf - (tonumber(v[2]) or 0)
        redis.call('HDEL', wkey, b .. 'c', b .. 'f')
      end
    end
    s.wlo = cutoff
  end
  local bucket = math.max(second, s.wlo)
  redis.call('HINCRBY', wkey, bucket .. 'c', n)
  s.wc = s.wc + n
  if failed then
    redis.call('HINCRBY', wkey, bucket .. 'f', n)
    s.wf = s.wf + n
  end
end

-- Return calls, failures in the window at `now` without writing.
local function cb_window_counts(now, key, s, cfg)
  if s.wk ~= cb_signature(cfg) then
    return 0, 0
  end
  if cfg.wkind == 'count' or s.wlo == nil then
    return s.wc, s.wf
  end
  local cutoff = math.floor(now) - cfg.wsize + 1
  if s.wlo >= cutoff then
    return s.wc, s.wf
  end
  if cutoff - s.wlo >= cfg.wsize then
    return 0, 0
  end
  local wkey = cb_window_key(key)
  local wc, wf = s.wc, s.wf
  for b = s.wlo, cutoff - 1 do
    local v = redis.call('HMGET', wkey, b .. 'c', b .. 'f')
    wc = wc - (tonumber(v[1]) or 0)
    wf = wf - (tonumber(v[2]) or 0)
  end
  return wc, wf
end

-- Admit or reject one call. Returns {allowed 0/1, state, generation, retry_after, trial 0/1}, transitions.
local function cb_allow(now, key, cfg)
  local s = cb_load(key)
  local trans = {}
  local dirty = cb_lazy(now, s, trans)
  local allowed, trial, retry = 0, 0, 0
  if s.st == 'closed' or s.st == 'forced-closed' then
    -- The common path writes nothing: one HMGET.
    allowed = 1
  elseif s.st == 'forced-open' then
    retry = cfg.open_s
  elseif s.st == 'open' then
    retry = s.ou - now
  else
    if cb_release_abandoned(now, s) then
      dirty = true
    end
    if s.ti < cfg.k then
      if s.ti == 0 then
        s.lu = now + cb_trial_lease(cfg)
      end
      s.ti = s.ti + 1
      allowed, trial, dirty = 1, 1, true
    else
      retry = s.lu - now
    end
  end
  if dirty then
    cb_save(now, key, s)
  end
  return {allowed, s.st, s.gen, cb_fmt(retry), trial}, trans
end

-- Apply the outcome of a call admitted with `generation`, after `earlier` successes of calls admitted
-- with it in the closed state (reported in a batch, resilience/runtime/outcomes.py). Returns state, transitions.
local function cb_record(now, key, cfg, generation, success, earlier)
  local s = cb_load(key)
  local trans = {}
  local dirty = cb_lazy(now, s, trans)
  if cb_release_abandoned(now, s) then
    dirty = true
  end
  if generation == s.gen then
    if s.st == 'closed' and earlier > 0 then
      -- As if recorded one by one: a success can trip the breaker only by bringing the window up
      -- to its minimum calls with the failure rate still over the threshold. Once one has not,
      -- the rest only lower the rate: they are counted in one step.
      s.cf = 0
      dirty = true
      local min_calls = cfg.min_calls
      if cfg.wkind == 'count' then
        min_calls = math.min(min_calls, cfg.wsize)
      end
      while earlier > 0 and s.st == 'closed' do
        cb_window_add(now, key, s, cfg, false, 1)  -- the first one also drops what the window left behind
        earlier = earlier - 1
        if cb_ready_to_trip(cfg, 0, s.wc, s.wf) then
          cb_trip(now, s, cfg, trans)
        elseif earlier > 0 and (cfg.rate == 0 or s.wf == 0 or s.wc >= min_calls) then
          cb_window_add(now, key, s, cfg, false, earlier)
          earlier = 0
        end
      end
    end
    if success == nil then
      -- A batch of successes only.
    elseif s.st == 'closed' then
      if success then
        s.cf = 0
      else
        s.cf = s.cf + 1
      end
      cb_window_add(now, key, s, cfg, not success, 1)
      if cb_ready_to_trip(cfg, s.cf, s.wc, s.wf) then
        cb_trip(now, s, cfg, trans)
      end
      dirty = true
    elseif s.st == 'half-open' then
      if not success then
        cb_trip(now, s, cfg, trans)
      else
        s.ts = s.ts + 1
        if s.ts >= cfg.k then
          cb_move(now, s, 'closed', trans)
        end
      end
      dirty = true
    end
  end
  if dirty then
    cb_save(now, key, s)
  end
  return s.st, trans
end

-- Force ('forced-open' / 'forced-closed') or release ('') the breaker. Returns state, transitions.
local function cb_force(now, key, state)
  local s = cb_load(key)
  local trans = {}
  local dirty = cb_lazy(now, s, trans)
  if state == '' then
    if s.st == 'forced-open' or s.st == 'forced-closed' then
      cb_move(now, s, 'closed', trans)
      dirty = true
    end
  elseif s.st ~= state then
    cb_move(now, s, state, trans)
    dirty = true
  end
  if dirty then
    cb_save(now, key, s)
  end
  return s.st, trans
end

-- Put the breaker back to CLOSED with a new generation. Returns state, transitions.
local function cb_reset(now, key)
  local s = cb_load(key)
  local trans = {}
  cb_lazy(now, s, trans)
  if s.st == 'closed' then
    cb_change(s, 'closed')
  else
    cb_move(now, s, 'closed', trans)
  end
  cb_save(now, key, s)
  return s.st, trans
end

-- Read-only view. Returns {state, generation, consecutive, window calls, window failures,
-- opened_at or '', retry_after, forced 0/1}; the lazy steps are applied to the loaded copy only.
local function cb_snapshot(now, key, cfg)
  local s = cb_load(key)
  cb_lazy(now, s, {})
  cb_release_abandoned(now, s)
  local wc, wf = cb_window_counts(now, key, s, cfg)
  local retry = 0
  if s.st == 'open' then
    retry = s.ou - now
  elseif s.st == 'forced-open' then
    retry = cfg.open_s
  elseif s.st == 'half-open' and s.ti >= cfg.k then
    retry = s.lu - now
  end
  local forced = 0
  if s.st == 'forced-open' or s.st == 'forced-closed' then
    forced = 1
  end
  return {s.st, s.gen, s.cf, wc, wf, s.oa and cb_fmt(s.oa) or '', cb_fmt(retry), forced}
end
