-- Reliable batched fetch: promote due jobs, pop up to `max` queued jobs, lease them.
-- KEYS: 1 wait, 2 scheduled, 3 retry, 4 active, 5 stats, 6 paused, 7 job prefix
-- ARGV: 1 max, 2 worker id, 3 lease ms, 4 promotion chunk
-- Returns {paused, next_due_in_ms or -1, more, lease_until, then per job:
--          id, payload, attempt, max attempts, enqueued at, fence}
local now = now_ms()
if redis.call('EXISTS', KEYS[6]) == 1 then return {1, -1, 0, 0} end
local want = tonumber(ARGV[1])
local worker = ARGV[2]
local lease_until = now + tonumber(ARGV[3])
local chunk = tonumber(ARGV[4])
local jp = KEYS[7]

promote(KEYS[2], KEYS[1], jp, now, chunk)
promote(KEYS[3], KEYS[1], jp, now, chunk)

-- Ids whose job is no longer queued (cancelled, removed, expired) are skipped and dropped
-- here, once each; the budget bounds the work of one call however many there are.
local budget = want * 4 + 64
local ids, rows = {}, {}
local ghosts = 0
local more = 0
while #ids < want do
  if budget <= 0 then more = 1 break end
  local ask = math.min(want - #ids, budget)
  local popped = redis.call('RPOP', KEYS[1], ask)
  if not popped then break end
  budget = budget - #popped
  for _, id in ipairs(popped) do
    local h = redis.call('HMGET', jp .. id, 's', 'p', 'a', 'm', 'e')
    if h[1] == 'queued' then
      ids[#ids + 1] = id
      rows[#rows + 1] = h
    else
      ghosts = ghosts + 1
    end
  end
  if #popped < ask then break end
end
if ghosts > 0 then redis.call('HINCRBY', KEYS[5], 'ghosts', -ghosts) end

local n = #ids
local next_due = -1
if n < want and more == 0 then
  local due = nil
  for k = 2, 3 do
    local r = redis.call('ZRANGE', KEYS[k], 0, 0, 'WITHSCORES')
    if #r > 0 then
      local s = tonumber(r[2])
      if due == nil or s < due then due = s end
    end
  end
  if due ~= nil then next_due = math.max(0, due - now) end
end

local out = {0, next_due, more, lease_until}
if n == 0 then return out end

local last = redis.call('HINCRBY', KEYS[5], 'fence', n)
local first = last - n
local zargs = {}
for i = 1, n do
  local id = ids[i]
  local h = rows[i]
  local a = (tonumber(h[3]) or 0) + 1
  local fence = first + i
  redis.call('HSET', jp .. id, 's', 'running', 'a', a, 'f', fence, 'w', worker, 't', now)
  zargs[#zargs + 1] = lease_until
  zargs[#zargs + 1] = fence .. ':' .. id
  out[#out + 1] = id
  out[#out + 1] = h[2]
  out[#out + 1] = a
  out[#out + 1] = tonumber(h[4]) or 1
  out[#out + 1] = tonumber(h[5]) or 0
  out[#out + 1] = fence
end
batched('ZADD', KEYS[4], zargs)
return out
