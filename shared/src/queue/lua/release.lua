-- Fenced put-back of a running job without burning its attempt.
-- KEYS: 1 job hash, 2 active, 3 wait, 4 scheduled, 5 stats, 6 paused, 7 cancelled index,
--       8 fair prefix
-- A keyed job goes back to the head of its key's list (`fair_push`).
-- ARGV: 1 job-prefix length, 2 active member (`<fence>:<id>`), 3 delay ms, 4 result ttl ms,
--       5 wake channel, 6 cancelled index max
-- Returns 0 lease lost, 1 put back, 2 ended as cancelled (a cancel was requested).
local jk = KEYS[1]
if redis.call('ZREM', KEYS[2], ARGV[2]) == 0 then return 0 end
local h = redis.call('HMGET', jk, 'a', 'c', 'g')
local now = now_ms()
local id = string.sub(jk, tonumber(ARGV[1]) + 1)
if h[2] then
  finish_cancelled(jk, id, KEYS[5], KEYS[7], tonumber(ARGV[6]), now, tonumber(ARGV[4]))
  return 2
end
local a = math.max((tonumber(h[1]) or 1) - 1, 0)
local delay = tonumber(ARGV[3])
if delay > 0 then
  local at = now + delay
  redis.call('HSET', jk, 's', 'scheduled', 'a', a, 'r', at)
  redis.call('ZADD', KEYS[4], at, id)
  wake_if_first(KEYS[4], id, KEYS[6], ARGV[5])
else
  redis.call('HSET', jk, 's', 'queued', 'a', a)
  if h[3] then
    fair_push(KEYS[8], KEYS[5], h[3], id, true)
    wake(redis.call('LLEN', KEYS[3]) + fair_len(KEYS[5]), 1, KEYS[6], ARGV[5])
  else
    local len = redis.call('RPUSH', KEYS[3], id)
    wake(len + fair_len(KEYS[5]), 1, KEYS[6], ARGV[5])
  end
end
return 1
