-- One breaker operation per call; loaded as breaker_lib .. breaker_main.
-- KEYS[1] state hash, KEYS[2] window key (KEYS[1] .. ':w').
-- ARGV[1] op, ARGV[2] now ('' = Redis TIME), then per op:
--   allow    ARGV[3..9] config                                  -> {permit, transitions}
--   record   ARGV[3..9] config, ARGV[10] generation, ARGV[11] '1' success / '0' failure / '' none,
--            ARGV[12] successes admitted with that generation to count first (absent = 0)
--                                                               -> {state, transitions}
--   force    ARGV[3] 'forced-open' | 'forced-closed' | '' (release), ARGV[4] events channel
--                                                               -> {state, transitions}
--   reset    ARGV[3] events channel                             -> {state, transitions}
--   snapshot ARGV[3..9] config                                  -> snapshot array
-- transitions: array of {from, to, generation, at}.
--
-- force and reset publish the breaker's name on the events channel ('' = do not), in the same
-- atomic step as the change: workers that refuse calls to a breaker they saw open, without asking
-- Redis, drain that channel before they trust what they saw (resilience/runtime/refusals.py).

local op = ARGV[1]
local now = cb_clock(ARGV[2])
local key = KEYS[1]

if op == 'allow' then
  local permit, trans = cb_allow(now, key, cb_config(ARGV, 3))
  return {permit, trans}
elseif op == 'record' then
  local success = nil
  if ARGV[11] ~= '' then success = ARGV[11] == '1' end
  local state, trans = cb_record(now, key, cb_config(ARGV, 3), tonumber(ARGV[10]), success, tonumber(ARGV[12]) or 0)
  return {state, trans}
elseif op == 'force' then
  local state, trans = cb_force(now, key, ARGV[3])
  if ARGV[4] ~= nil and ARGV[4] ~= '' then redis.call('PUBLISH', ARGV[4], key) end
  return {state, trans}
elseif op == 'reset' then
  local state, trans = cb_reset(now, key)
  if ARGV[3] ~= nil and ARGV[3] ~= '' then redis.call('PUBLISH', ARGV[3], key) end
  return {state, trans}
elseif op == 'snapshot' then
  return cb_snapshot(now, key, cb_config(ARGV, 3))
end
return redis.error_reply('unknown breaker op: ' .. tostring(op))
