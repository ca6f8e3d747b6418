-- Reliable batched fetch: promote due jobs, pop up to `max` queued jobs, lease them.
-- KEYS: 1 wait, 2 scheduled, 3 retry, 4 active, 5 stats, 6 paused, 7 job prefix, 8 idle workers
-- ARGV: 1 max, 2 worker id, 3 lease ms, 4 promotion chunk, 5 job events channel prefix
--       ('' = publish none), 6 wake channel, 7 how long an idle caller waits before fetching
--       again (ms)
-- Returns what `fetch_jobs` returns.
local k = {
  wait = KEYS[1], scheduled = KEYS[2], retry = KEYS[3], active = KEYS[4],
  stats = KEYS[5], paused = KEYS[6], jp = KEYS[7], idle = KEYS[8],
}
return fetch_jobs(k, tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4]), ARGV[5],
  ARGV[6], tonumber(ARGV[7]), now_ms())
