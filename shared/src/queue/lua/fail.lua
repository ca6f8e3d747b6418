-- Fenced failure of one attempt: retry after a delay, or dead.
-- KEYS: 1 job hash, 2 active, 3 retry, 4 dead, 5 stats, 6 job prefix, 7 paused,
--       8 cancelled index, 9 history prefix
-- ARGV: 1 job-prefix length, 2 active member (`<fence>:<id>`), 3 error, 4 kind (transient | permanent),
--       5 retry delay ms, 6 result ttl ms, 7 dead max, 8 errors kept, 9 wake channel,
--       10 cancelled index max, 11 1 = write the history
-- Returns {0} lease lost, {1, retry_at} retrying, {2} dead, {3} cancelled.
-- The history counts the attempt as `failed`, and as `retried` or `dead` by what follows, and
-- its run time.
local jk = KEYS[1]
if redis.call('ZREM', KEYS[2], ARGV[2]) == 0 then return {0} end
local h = redis.call('HMGET', jk, 'a', 'm', 'c', 't')
local now = now_ms()
local id = string.sub(jk, tonumber(ARGV[1]) + 1)
local a = tonumber(h[1]) or 0
local m = tonumber(h[2]) or 1
local add = nil
if ARGV[11] == '1' then
  add = history_new()
  add['failed'] = 1
  if h[4] then history_add(add, 'run', now - tonumber(h[4])) end
end
push_error(jk, tonumber(ARGV[8]), a, now, ARGV[4], ARGV[3])
local out
if h[3] then
  finish_cancelled(jk, id, KEYS[5], KEYS[8], tonumber(ARGV[10]), now, tonumber(ARGV[6]))
  out = {3}
elseif ARGV[4] == 'permanent' then
  to_dead(jk, id, KEYS[4], KEYS[6], now, 'permanent error: ' .. ARGV[3], tonumber(ARGV[7]))
  out = {2}
elseif a >= m then
  to_dead(jk, id, KEYS[4], KEYS[6], now,
    'attempts exhausted (' .. a .. ' of ' .. m .. '): ' .. ARGV[3], tonumber(ARGV[7]))
  out = {2}
else
  local at = now + tonumber(ARGV[5])
  redis.call('HSET', jk, 's', 'retrying', 'r', at)
  redis.call('ZADD', KEYS[3], at, id)
  wake_if_first(KEYS[3], id, KEYS[7], ARGV[9])
  out = {1, at}
end
if add then
  if out[1] == 2 then add['dead'] = 1 elseif out[1] == 1 then add['retried'] = 1 end
  history_write(KEYS[9], add, now)
end
return out
