-- Where a queued job stands in the wait list, searching at most ARGV[2] entries from the end
-- that fetch pops (LPOS ... RANK -1 MAXLEN n: O(n) at worst, whatever the backlog).
-- KEYS: 1 wait
-- ARGV: 1 job id, 2 how many entries to search
-- Returns 1 for the next job a fetch takes, 2 for the one after, …; -1 when the id is not among
-- the entries searched.
local idx = redis.call('LPOS', KEYS[1], ARGV[1], 'RANK', -1, 'MAXLEN', tonumber(ARGV[2]))
if not idx then
  return -1
end
return redis.call('LLEN', KEYS[1]) - idx
