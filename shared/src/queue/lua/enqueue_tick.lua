-- Enqueue the job of one cron tick, at most once per (schedule, tick) across the fleet.
-- KEYS: 1 wait, 2 scheduled, 3 paused, 4 fired ticks of the schedule, 5 idle workers, 6 job hash
-- ARGV: 1 job-prefix length, 2 wake channel, 3 tick (unix secs), 4 dedup window (secs),
--       5..8 the job (payload, delay ms, run-at ms, max attempts)
-- Returns {1} created, {0} duplicate (tick fired already, or older than the window).
local tick = tonumber(ARGV[3])
local window = tonumber(ARGV[4])
local newest = redis.call('ZRANGE', KEYS[4], -1, -1, 'WITHSCORES')
local top = tick
if #newest > 0 then
  local n = tonumber(newest[2])
  if tick < n - window then return {0} end
  if n > top then top = n end
end
if redis.call('ZADD', KEYS[4], 'NX', tick, ARGV[3]) == 0 then return {0} end
redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', '(' .. (top - window))
return enqueue_jobs(KEYS[1], KEYS[2], KEYS[3], KEYS[5], ARGV[2], tonumber(ARGV[1]), 6, 4, now_ms())
