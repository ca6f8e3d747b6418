-- Enqueue one job counted in a group of at most ARGV[4] unfinished jobs (a session's calls),
-- atomically: the count, the cap and the enqueue in one script, so a call costs one round trip.
-- KEYS: 1 wait, 2 scheduled, 3 paused, 4 idle workers, 5 hand-off terms, 6 active, 7 stats,
--       8 job prefix, 9 history prefix, 10 the group set, 11 the group's pending zset,
--       12 fair prefix, 13 the job hash
-- ARGV: 1 job-prefix length, 2 wake channel, 3 1 = write the history, 4 the group's cap,
--       5 the group's TTL (s), 6 the weight of the job's fairness key (0 = no
--       key: the wait list), 7 the fairness key (may be ''), then the job's 4 (see enqueue_jobs)
-- Returns 1 (created), 0 (duplicate: nothing changed) or -1 (the group is full: not enqueued).
local q = {
  wait = KEYS[1], scheduled = KEYS[2], paused = KEYS[3], idle = KEYS[4], handoff = KEYS[5],
  active = KEYS[6], stats = KEYS[7], jp = KEYS[8], hp = '', fp = KEYS[12],
}
if ARGV[3] == '1' then q.hp = KEYS[9] end
if ARGV[6] ~= '0' then q.g, q.gw = ARGV[7], tonumber(ARGV[6]) end
if redis.call('EXISTS', KEYS[13]) == 1 then return 0 end
local now = now_ms()
local id = string.sub(KEYS[13], tonumber(ARGV[1]) + 1)
if not group_admit(KEYS[10], KEYS[11], id, tonumber(ARGV[4]), tonumber(ARGV[5]), q.jp, now) then
  return -1
end
return enqueue_jobs(q, ARGV[2], tonumber(ARGV[1]), 13, 7, now)[1]
