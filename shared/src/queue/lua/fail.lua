-- Fenced failure of one attempt: retry after a delay, or dead.
-- KEYS: 1 job hash, 2 active, 3 retry, 4 dead, 5 stats, 6 job prefix, 7 paused
-- ARGV: 1 job-prefix length, 2 active member (`<fence>:<id>`), 3 error, 4 kind (transient | permanent),
--       5 retry delay ms, 6 result ttl ms, 7 dead max, 8 errors kept, 9 wake channel
-- Returns {0} lease lost, {1, retry_at} retrying, {2} dead, {3} cancelled.
local jk = KEYS[1]
if redis.call('ZREM', KEYS[2], ARGV[2]) == 0 then return {0} end
local h = redis.call('HMGET', jk, 'a', 'm', 'c')
local now = now_ms()
local id = string.sub(jk, tonumber(ARGV[1]) + 1)
local a = tonumber(h[1]) or 0
local m = tonumber(h[2]) or 1
push_error(jk, tonumber(ARGV[8]), a, now, ARGV[4], ARGV[3])
if h[3] then
  finish_cancelled(jk, KEYS[5], now, tonumber(ARGV[6]))
  return {3}
end
if ARGV[4] == 'permanent' then
  to_dead(jk, id, KEYS[4], KEYS[6], now, 'permanent error: ' .. ARGV[3], tonumber(ARGV[7]))
  return {2}
end
if a >= m then
  to_dead(jk, id, KEYS[4], KEYS[6], now,
    'attempts exhausted (' .. a .. ' of ' .. m .. '): ' .. ARGV[3], tonumber(ARGV[7]))
  return {2}
end
local at = now + tonumber(ARGV[5])
redis.call('HSET', jk, 's', 'retrying', 'r', at)
redis.call('ZADD', KEYS[3], at, id)
wake_if_first(KEYS[3], id, KEYS[7], ARGV[9])
return {1, at}
