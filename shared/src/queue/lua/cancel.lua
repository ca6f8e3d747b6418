-- Cancel a job: a waiting one ends at once; a running one is asked to stop.
-- KEYS: 1 job hash, 2 scheduled, 3 retry, 4 stats, 5 cancelled index
-- ARGV: 1 job id, 2 result ttl ms, 3 cancel channel, 4 cancelled index max
-- Returns 0 not found, 1 removed, 2 signalled, 3 already finished.
local jk = KEYS[1]
local s = redis.call('HGET', jk, 's')
if not s then return 0 end
local now = now_ms()
local ttl = tonumber(ARGV[2])
local keep = tonumber(ARGV[4])
if s == 'queued' then
  -- The id stays in the wait list (no LREM over a big list); fetch drops it later.
  redis.call('HINCRBY', KEYS[4], 'ghosts', 1)
  finish_cancelled(jk, ARGV[1], KEYS[4], KEYS[5], keep, now, ttl)
  return 1
elseif s == 'scheduled' then
  redis.call('ZREM', KEYS[2], ARGV[1])
  finish_cancelled(jk, ARGV[1], KEYS[4], KEYS[5], keep, now, ttl)
  return 1
elseif s == 'retrying' then
  redis.call('ZREM', KEYS[3], ARGV[1])
  finish_cancelled(jk, ARGV[1], KEYS[4], KEYS[5], keep, now, ttl)
  return 1
elseif s == 'running' then
  redis.call('HSET', jk, 'c', 1)
  redis.call('PUBLISH', ARGV[3], ARGV[1])
  return 2
end
return 3
