-- Fenced, batched completion: store each result and release its lease, only where the
-- caller's attempt is still the running one (its `<fence>:<id>` member is in the active set).
-- KEYS: 1 active, 2 completed index (list, newest first), 3 stats, 4.. one job hash per job
-- ARGV: 1 job-prefix length, 2 result ttl ms, 3 completed index max,
--       then per job: active member (`<fence>:<id>`), result
-- Returns one 1 (done) or 0 (lease lost) per job.
local now = now_ms()
local plen = tonumber(ARGV[1])
local ttl = tonumber(ARGV[2])
local keep = tonumber(ARGV[3])
local n = #KEYS - 3
local members = {}
for i = 1, n do members[i] = ARGV[2 + 2 * i] end
local scores = redis.call('ZMSCORE', KEYS[1], unpack(members))
local res, done, live, seen = {}, {}, {}, {}
for i = 1, n do
  local m = members[i]
  if scores[i] and not seen[m] then
    seen[m] = true
    local jk = KEYS[3 + i]
    redis.call('HSET', jk, 's', 'completed', 'x', ARGV[3 + 2 * i], 'd', now)
    redis.call('PEXPIRE', jk, ttl)
    done[#done + 1] = string.sub(jk, plen + 1)
    live[#live + 1] = m
    res[i] = 1
  else
    res[i] = 0
  end
end
if #done > 0 then
  batched('ZREM', KEYS[1], live)
  batched('LPUSH', KEYS[2], done)
  redis.call('LTRIM', KEYS[2], 0, keep - 1)
  redis.call('HINCRBY', KEYS[3], 'completed', #done)
end
return res
