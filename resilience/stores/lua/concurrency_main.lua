-- One operation on one (policy, key)'s slots, with Redis's clock. Loaded as concurrency_lib .. concurrency_main.
--
-- KEYS[1..3] slots, queue, deadlines (concurrency_lib)
-- ARGV[1]    'acquire' | 'release' | 'status'
-- acquire:   ARGV[2] lease id, ARGV[3] max in flight, ARGV[4] lease ms, ARGV[5] ms the caller still
--            waits (0: do not queue), ARGV[6] '1' to take a slot even when none is free (dry run)
-- release:   ARGV[2] lease id
--
-- Reply: acquire {acquired, in flight after, waiters ahead (-1: not queued), was full};
--        release {in flight after, 1 if the slot was still held}; status {in flight, waiting}.

local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])
local slots, queue, deadlines = KEYS[1], KEYS[2], KEYS[3]
local op = ARGV[1]

if op == 'release' then
  return cc_release(slots, queue, deadlines, ARGV[2])
end
if op == 'status' then
  local in_flight = cc_sweep(now, slots, queue, deadlines)
  return {in_flight, redis.call('ZCARD', queue)}
end
local reply, err = cc_acquire(now, slots, queue, deadlines, ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6] == '1')
if reply == nil then
  return redis.error_reply(err)
end
return reply
