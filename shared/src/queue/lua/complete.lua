-- Fenced, batched completion (see `complete_jobs`).
-- KEYS: 1 active, 2 completed index (list, newest first), 3 stats, 4.. one job hash per job
-- ARGV: 1 job-prefix length, 2 result ttl ms, 3 completed index max, 4 job events channel
--       prefix ('' = publish none), then per job: active member (`<fence>:<id>`), result
-- Returns one 1 (done) or 0 (lease lost) per job.
local res = complete_jobs(KEYS[1], KEYS[2], KEYS[3], 4, #KEYS - 3, 5, tonumber(ARGV[1]),
  ARGV[2], tonumber(ARGV[3]), ARGV[4], now_ms())
return res
