-- Bring a dead job back to the head of the wait list with a fresh attempt budget, due now.
-- KEYS: 1 job hash, 2 dead, 3 wait, 4 paused, 5 stats, 6 fair prefix
-- A keyed job goes to the head of its key's list instead (`fair_push`).
-- ARGV: 1 job id, 2 wake channel
-- Returns 1 requeued, 0 not dead.
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if redis.call('ZREM', KEYS[2], ARGV[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 's', 'queued', 'a', 0, 'r', int(now_ms()))
redis.call('HDEL', KEYS[1], 'why', 'd', 'c', 'x')
local g = redis.call('HGET', KEYS[1], 'g')
if g then
  fair_push(KEYS[6], KEYS[5], g, ARGV[1], true)
else
  redis.call('RPUSH', KEYS[3], ARGV[1])
end
wake(redis.call('LLEN', KEYS[3]) + fair_len(KEYS[5]), 1, KEYS[4], ARGV[2])
return 1
