-- One worker round trip: complete a batch of attempts (see `complete_jobs`), then lease as
-- many jobs as there are free slots, the completed attempts' slots included (see `fetch_jobs`),
-- and add both to this minute's history in one write.
-- KEYS: 1 wait, 2 scheduled, 3 retry, 4 active, 5 stats, 6 paused, 7 job prefix,
--       8 completed index, 9 idle workers, 10 hand-off terms, 11 history prefix, 12 fair prefix,
--       13.. one job hash per completion
-- ARGV: 1 free slots besides the completions', 2 worker id, 3 lease ms, 4 promotion chunk,
--       5 job events channel prefix ('' = publish none), 6 job-prefix length, 7 result ttl ms,
--       8 completed index max, 9 wake channel, 10 how long an idle caller waits before
--       fetching again (ms), 11 1 = the caller takes hand-offs, 12 1 = write the history,
--       then per completion: active member, result, started at (ms)
-- Returns {n, then n completion results (1 done, 0 lease lost), then the fetch's reply}.
local now = now_ms()
local k = {
  wait = KEYS[1], scheduled = KEYS[2], retry = KEYS[3], active = KEYS[4],
  stats = KEYS[5], paused = KEYS[6], jp = KEYS[7], idle = KEYS[9], handoff = KEYS[10],
  fp = KEYS[12],
}
local add = nil
if ARGV[12] == '1' then add = history_new() end
local n = #KEYS - 12
local res, done = complete_jobs(KEYS[4], KEYS[8], KEYS[5], 13, n, 13, tonumber(ARGV[6]),
  ARGV[7], tonumber(ARGV[8]), ARGV[5], add, now)
local out = {n}
for i = 1, n do out[#out + 1] = res[i] end
local fetched = fetch_jobs(k, tonumber(ARGV[1]) + done, ARGV[2], tonumber(ARGV[3]),
  tonumber(ARGV[4]), ARGV[5], ARGV[9], tonumber(ARGV[10]), ARGV[11] == '1', add, now)
for i = 1, #fetched do out[#out + 1] = fetched[i] end
if add then history_write(KEYS[11], add, now) end
return out
