-- Enqueue the job of one cron tick, at most once per (schedule, tick) across the fleet.
-- KEYS: 1 wait, 2 scheduled, 3 paused, 4 fired ticks of the schedule, 5 idle workers,
--       6 hand-off terms, 7 active, 8 stats, 9 job prefix, 10 history prefix, 11 job hash
-- ARGV: 1 job-prefix length, 2 wake channel, 3 tick (unix secs), 4 dedup window (secs),
--       5 1 = write the history (a hand-off's wait), 6..9 the job (payload, delay ms,
--       run-at ms, max attempts)
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
local q = {
  wait = KEYS[1], scheduled = KEYS[2], paused = KEYS[3], idle = KEYS[5], handoff = KEYS[6],
  active = KEYS[7], stats = KEYS[8], jp = KEYS[9], hp = '',
}
if ARGV[5] == '1' then q.hp = KEYS[10] end
return enqueue_jobs(q, ARGV[2], tonumber(ARGV[1]), 11, 5, now_ms())
