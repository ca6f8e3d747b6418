-- Where a queued job stands, searching at most ARGV[2] entries of each list from the end that
-- fetch pops (LPOS ... RANK -1 MAXLEN n: O(n) at worst, whatever the backlog).
-- KEYS: 1 wait, 2 fair prefix, 3 the job hash
-- ARGV: 1 job id, 2 how many entries to search
-- Returns {position, position within its key, keys ahead of its key, wait list length}: an
-- unkeyed job's position in the wait list (1 for the next job a fetch takes, 2 for the one
-- after, …) and 0, 0, 0. A keyed job's place in its key's list (1 = its key's next), the
-- keys served before its key (the fresh keys first, then the ring), the wait list's length (served before any key), and as its
-- position the most jobs that run before it with equal weights: the wait list, one job of
-- every key per round for the rounds before its own, then the keys ahead. -1 for the position
-- when the id (or its key) is not among the entries searched.
local max = tonumber(ARGV[2])
local g = redis.call('HGET', KEYS[3], 'g')
if not g then
  local idx = redis.call('LPOS', KEYS[1], ARGV[1], 'RANK', -1, 'MAXLEN', max)
  if not idx then return {-1, 0, 0, 0} end
  return {redis.call('LLEN', KEYS[1]) - idx, 0, 0, 0}
end
local waiting = redis.call('LLEN', KEYS[1])
local lk = KEYS[2] .. 'k:' .. g
local idx = redis.call('LPOS', lk, ARGV[1], 'RANK', -1, 'MAXLEN', max)
if not idx then return {-1, 0, 0, waiting} end
local in_key = redis.call('LLEN', lk) - idx
-- Fresh keys are served before the ring.
local fresh = KEYS[2] .. 'fresh'
local ring = KEYS[2] .. 'ring'
local fresh_len = redis.call('LLEN', fresh)
local ring_len = redis.call('LLEN', ring)
local ahead
local f = redis.call('LPOS', fresh, g, 'RANK', -1, 'MAXLEN', max)
if f then
  ahead = fresh_len - f - 1
else
  local r = redis.call('LPOS', ring, g, 'RANK', -1, 'MAXLEN', max)
  if not r then return {-1, in_key, 0, waiting} end
  ahead = fresh_len + ring_len - r - 1
end
local keys = fresh_len + ring_len
return {waiting + (in_key - 1) * keys + ahead + 1, in_key, ahead, waiting}
