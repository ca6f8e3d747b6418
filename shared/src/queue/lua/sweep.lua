-- Rescue jobs whose lease expired, and promote due delayed and retrying jobs, in bounded chunks.
-- KEYS: 1 active, 2 wait, 3 scheduled, 4 retry, 5 dead, 6 stats, 7 paused, 8 job prefix,
--       9 cancelled index, 10 history prefix, 11 fair prefix
-- Rescued and promoted keyed jobs go to the head of their key's list (`fair_push`).
-- ARGV: 1 max jobs per step, 2 result ttl ms, 3 dead max, 4 errors kept, 5 wake channel,
--       6 cancelled index max, 7 1 = write the history
-- Returns {rescued, dead, cancelled, promoted, more}
-- The history counts each expired attempt as `failed`, and as `retried` (rescued) or `dead`.
local now = now_ms()
local max = tonumber(ARGV[1])
local ttl = tonumber(ARGV[2])
local dead_max = tonumber(ARGV[3])
local keep = tonumber(ARGV[4])
local jp = KEYS[8]
local before = redis.call('LLEN', KEYS[2]) + fair_len(KEYS[6])
local rescued, dead, cancelled = 0, 0, 0
local requeue, keyed = {}, {}
local expired = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, max)
if #expired > 0 then
  batched('ZREM', KEYS[1], expired)
  local now_s = int(now)
  for _, member in ipairs(expired) do
    local fence, id = split_member(member)
    local jk = jp .. id
    local h = redis.call('HMGET', jk, 's', 'a', 'm', 'c', 'w', 'f', 'g')
    if h[1] == 'running' and h[6] == fence then
      local a = tonumber(h[2]) or 0
      local m = tonumber(h[3]) or 1
      local msg = 'lease expired: worker ' .. (h[5] or '?') .. ' died or stalled'
      push_error(jk, keep, a, now, 'lease', msg)
      if h[4] then
        finish_cancelled(jk, id, KEYS[6], KEYS[9], tonumber(ARGV[6]), now, ttl)
        cancelled = cancelled + 1
      elseif a >= m then
        to_dead(jk, id, KEYS[5], jp, now, msg .. ' (attempt ' .. a .. ' of ' .. m .. ')', dead_max)
        dead = dead + 1
      else
        -- Due again now: the next attempt's wait counts from the rescue.
        redis.call('HSET', jk, 's', 'queued', 'r', now_s)
        if h[7] then keyed[#keyed + 1] = { h[7], id } else requeue[#requeue + 1] = id end
        rescued = rescued + 1
      end
    end
  end
end
if ARGV[7] == '1' and rescued + dead + cancelled > 0 then
  local add = history_new()
  add['failed'], add['retried'], add['dead'] = rescued + dead + cancelled, rescued, dead
  history_write(KEYS[10], add, now)
end
if #requeue > 0 then
  local rev = {}
  for i = #requeue, 1, -1 do rev[#rev + 1] = requeue[i] end
  batched('RPUSH', KEYS[2], rev)
end
for i = #keyed, 1, -1 do fair_push(KEYS[11], KEYS[6], keyed[i][1], keyed[i][2], true) end
local promoted = promote(KEYS[3], KEYS[2], jp, now, max, KEYS[11], KEYS[6])
  + promote(KEYS[4], KEYS[2], jp, now, max, KEYS[11], KEYS[6])
local pushed = #requeue + #keyed + promoted
if before == 0 then wake(pushed, pushed, KEYS[7], ARGV[5]) end
local more = 0
if #expired >= max then more = 1 end
return {rescued, dead, cancelled, promoted, more}
