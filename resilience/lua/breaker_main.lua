-- One breaker operation per call; loaded as breaker_lib .. breaker_main.
-- KEYS[1] state hash, KEYS[2] window key (KEYS[1] .. ':w').
-- ARGV[1] op, ARGV[2] now ('' = Redis TIME), then per op:
--   allow    ARGV[3..9] config                                  -> {permit, transitions}
--   record   ARGV[3..9] config, ARGV[10] generation, ARGV[11] '1' success / '0' failure
--                                                               -> {state, transitions}
--   force    ARGV[3] 'forced-open' | 'forced-closed' | '' (release) -> {state, transitions}
--   reset                                                       -> {state, transitions}
--   snapshot ARGV[3..9] config                                  -> snapshot array
-- transitions: array of {from, to, generation, at}.

local op = ARGV[1]
local now = cb_clock(ARGV[2])
local key = KEYS[1]

if op == 'allow' then
  local permit, trans = cb_allow(now, key, cb_config(ARGV, 3))
  return {permit, trans}
elseif op == 'record' then
  local state, trans = cb_record(now, key, cb_config(ARGV, 3), tonumber(ARGV[10]), ARGV[11] == '1')
  return {state, trans}
elseif op == 'force' then
  local state, trans = cb_force(now, key, ARGV[3])
  return {state, trans}
elseif op == 'reset' then
  local state, trans = cb_reset(now, key)
  return {state, trans}
elseif op == 'snapshot' then
  return cb_snapshot(now, key, cb_config(ARGV, 3))
end
return redis.error_reply('unknown breaker op: ' .. tostring(op))
