-- Fenced, batched completion (see `complete_jobs`).
-- KEYS: 1 active, 2 completed index (list, newest first), 3 stats, 4 history prefix,
--       5.. one job hash per job
-- ARGV: 1 job-prefix length, 2 result ttl ms, 3 completed index max, 4 job events channel
--       prefix ('' = publish none), 5 1 = write the history, then per job: active member
--       (`<fence>:<id>`), result, started at (ms)
-- Returns one 1 (done) or 0 (lease lost) per job.
local now = now_ms()
local add = nil
if ARGV[5] == '1' then add = history_new() end
local res = complete_jobs(KEYS[1], KEYS[2], KEYS[3], 5, #KEYS - 4, 6, tonumber(ARGV[1]),
  ARGV[2], tonumber(ARGV[3]), ARGV[4], add, now)
if add then history_write(KEYS[4], add, now) end
return res
