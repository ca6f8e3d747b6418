-- Adaptive concurrency (AIMD): record one provider outcome for semaphore `name` and move its
-- effective limit, fleet-wide, in one atomic step.
--
-- KEYS[1] runtime limit overrides hash   KEYS[2] adaptive state hash
-- ARGV[1] name   ARGV[2] 'decrease' or 'increase'   ARGV[3] configured default (-1: none)
-- ARGV[4] decrease factor (0 < f < 1)   ARGV[5] decrease cooldown ms
-- ARGV[6] increase step   ARGV[7] successes per increase   ARGV[8] release channel
--
-- The ceiling is the runtime override, else the configured default. The effective limit is the
-- hash field `name` (absent: the ceiling). A decrease makes it max(1, min(limit - 1,
-- floor(limit * factor))), at most once per cooldown (field `name:dec_at`, Redis time); an
-- increase counts one success (field `name:ok`) and adds `step` (up to the ceiling) every
-- `every` successes while below the ceiling. Leases are never touched: a lowered limit only stops
-- new grants. Returns {change (-1 decreased, 0 none, 1 increased), effective, ceiling}.

if redis.replicate_commands then
  redis.replicate_commands()
end

local limits, state = KEYS[1], KEYS[2]
local name, op = ARGV[1], ARGV[2]
local ceiling = tonumber(redis.call('HGET', limits, name) or ARGV[3])
if ceiling == nil or ceiling < 1 then
  return {0, -1, -1}
end
local current = tonumber(redis.call('HGET', state, name)) or ceiling
if current > ceiling or current < 1 then
  current = ceiling
end

local ok_field = name .. ':ok'
local at_field = name .. ':dec_at'

if op == 'decrease' then
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  local last = tonumber(redis.call('HGET', state, at_field))
  if last and now - last < tonumber(ARGV[5]) then
    return {0, current, ceiling}
  end
  local lowered = math.floor(current * tonumber(ARGV[4]))
  if lowered > current - 1 then
    lowered = current - 1
  end
  if lowered < 1 then
    lowered = 1
  end
  redis.call('HSET', state, at_field, now, ok_field, 0)
  if lowered == current then
    return {0, current, ceiling}
  end
  redis.call('HSET', state, name, lowered)
  return {-1, lowered, ceiling}
end

-- increase
if current >= ceiling then
  redis.call('HDEL', state, name, ok_field)
  return {0, ceiling, ceiling}
end
local ok = redis.call('HINCRBY', state, ok_field, 1)
if ok < tonumber(ARGV[7]) then
  return {0, current, ceiling}
end
local raised = current + tonumber(ARGV[6])
if raised >= ceiling then
  raised = ceiling
  redis.call('HDEL', state, name, ok_field)
else
  redis.call('HSET', state, name, raised, ok_field, 0)
end
-- More room: wake the waiters.
redis.call('PUBLISH', ARGV[8], name)
return {1, raised, ceiling}
