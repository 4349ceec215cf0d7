-- Bulkhead slots as leases: one sorted set per (policy, key) of lease ids scored by expiry, and a
-- queue of waiting tickets in arrival order, all decided with Redis's clock.
-- Preceded by CC_MAX_IN_FLIGHT, CC_MAX_WAIT_MS and CC_MAX_LEASE_MS (resilience/concurrency_bounds.py).
--
-- KEYS[1]  slots: lease id -> expiry (microseconds)
-- KEYS[2]  queue: ticket (the waiter's lease id) -> arrival (microseconds)
-- KEYS[3]  queue deadlines: ticket -> when it is given up (microseconds)
-- ARGV[1]  'acquire' | 'release' | 'status'
-- acquire: ARGV[2] lease id, ARGV[3] max in flight, ARGV[4] lease ms, ARGV[5] ms the caller still
--          waits (0: do not queue), ARGV[6] '1' to take a slot even when none is free (dry run)
--
-- A slot goes to the oldest waiter first: a caller gets one only while fewer waiters are queued
-- ahead of it than slots are free. Leases and tickets of dead callers expire by their scores.
--
-- Reply: acquire {acquired, in flight after, waiters ahead (-1: not queued), was full};
--        release {in flight after}; status {in flight, waiting}.

local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])
local slots, queue, deadlines = KEYS[1], KEYS[2], KEYS[3]
local op = ARGV[1]

local function clamp(value, low, high)
  value = tonumber(value)
  if value == nil then return nil end
  value = math.floor(value)
  if value < low then return low end
  if value > high then return high end
  return value
end

if op == 'release' then
  local id = ARGV[2]
  redis.call('ZREM', slots, id)
  redis.call('ZREM', queue, id)
  redis.call('ZREM', deadlines, id)
  return {redis.call('ZCARD', slots)}
end

redis.call('ZREMRANGEBYSCORE', slots, '-inf', now)
-- Bounded per call, so a huge backlog of dead tickets costs several calls, never one long one.
local gone = redis.call('ZRANGEBYSCORE', deadlines, '-inf', now, 'LIMIT', 0, 200)
if #gone > 0 then
  redis.call('ZREM', queue, unpack(gone))
  redis.call('ZREM', deadlines, unpack(gone))
end
local in_flight = redis.call('ZCARD', slots)

if op == 'status' then
  return {in_flight, redis.call('ZCARD', queue)}
end

local id = ARGV[2]
local limit = clamp(ARGV[3], 1, CC_MAX_IN_FLIGHT)
local lease_ms = clamp(ARGV[4], 1, CC_MAX_LEASE_MS)
local wait_ms = clamp(ARGV[5], 0, CC_MAX_WAIT_MS)
if limit == nil or lease_ms == nil or wait_ms == nil then
  return redis.error_reply('ERR concurrency: a number argument is not a number')
end
local force = ARGV[6] == '1'

local free = limit - in_flight
local rank = redis.call('ZRANK', queue, id)
if rank == false then rank = nil end  -- a nil reply reaches Lua as false
local ahead = rank
if ahead == nil then ahead = redis.call('ZCARD', queue) end
local full = 0
if ahead >= free then full = 1 end

if full == 0 or force then
  redis.call('ZADD', slots, now + lease_ms * 1000, id)
  if rank ~= nil then
    redis.call('ZREM', queue, id)
    redis.call('ZREM', deadlines, id)
  end
  -- The set outlives its longest lease, and no longer: an idle key costs nothing.
  if redis.call('PTTL', slots) < lease_ms + 1000 then
    redis.call('PEXPIRE', slots, lease_ms + 1000)
  end
  return {1, in_flight + 1, -1, full}
end

if wait_ms > 0 then
  -- A little past the caller's own deadline, so its last attempt still finds its place.
  redis.call('ZADD', deadlines, now + (wait_ms + 250) * 1000, id)
  if rank == nil then
    redis.call('ZADD', queue, now, id)
  end
  for _, key in ipairs({queue, deadlines}) do
    if redis.call('PTTL', key) < CC_MAX_WAIT_MS + 1000 then
      redis.call('PEXPIRE', key, CC_MAX_WAIT_MS + 1000)
    end
  end
  return {0, in_flight, ahead, 1}
end
return {0, in_flight, -1, 1}
