-- Bulkhead slots as leases: only local functions, so any script can be composed with it
-- (concurrency_main standalone, admit_main in the middleware's one round trip).
-- Preceded by CC_MAX_IN_FLIGHT, CC_MAX_WAIT_MS and CC_MAX_LEASE_MS (resilience/engine/concurrency.py).
--
-- One (policy, key) has three keys sharing a hash tag:
--   slots      sorted set: lease id -> expiry (microseconds)
--   queue      sorted set: ticket (the waiter's lease id) -> arrival (microseconds)
--   deadlines  sorted set: ticket -> when it is given up (microseconds)
-- A slot goes to the oldest waiter first: a caller gets one only while fewer waiters are queued
-- ahead of it than slots are free. Leases and tickets of dead callers expire by their scores.

local function cc_clamp(value, low, high)
  value = tonumber(value)
  if value == nil then return nil end
  value = math.floor(value)
  if value < low then return low end
  if value > high then return high end
  return value
end

-- Drop expired leases and tickets; return the slots held.
local function cc_sweep(now, slots, queue, deadlines)
  redis.call('ZREMRANGEBYSCORE', slots, '-inf', now)
  -- Bounded per call, so a huge backlog of dead tickets costs several calls, never one long one.
  local gone = redis.call('ZRANGEBYSCORE', deadlines, '-inf', now, 'LIMIT', 0, 200)
  if #gone > 0 then
    redis.call('ZREM', queue, unpack(gone))
    redis.call('ZREM', deadlines, unpack(gone))
  end
  return redis.call('ZCARD', slots)
end

-- Give a slot (or a place in the queue) back: {in flight after, 1 if the slot was still held}.
-- 0 for a held slot means its lease ran out (or an operator reset the slots) while it was in use.
local function cc_release(slots, queue, deadlines, id)
  local held = redis.call('ZREM', slots, id)
  redis.call('ZREM', queue, id)
  redis.call('ZREM', deadlines, id)
  return {redis.call('ZCARD', slots), held}
end

-- Try for a slot: {acquired, in flight after, waiters ahead (-1: not queued), was full}, or nil and
-- an error text for an argument that is not a number. wait_ms is what the caller still waits
-- (0: do not queue); force takes a slot even when none is free (a dry run's counted slot).
local function cc_acquire(now, slots, queue, deadlines, id, limit, lease_ms, wait_ms, force)
  limit = cc_clamp(limit, 1, CC_MAX_IN_FLIGHT)
  lease_ms = cc_clamp(lease_ms, 1, CC_MAX_LEASE_MS)
  wait_ms = cc_clamp(wait_ms, 0, CC_MAX_WAIT_MS)
  if limit == nil or lease_ms == nil or wait_ms == nil then
    return nil, 'ERR concurrency: a number argument is not a number'
  end
  local in_flight = cc_sweep(now, slots, queue, deadlines)
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
end
