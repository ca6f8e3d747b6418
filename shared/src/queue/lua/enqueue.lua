-- Enqueue a batch of jobs, idempotently by id.
-- KEYS: 1 wait, 2 scheduled, 3 paused, 4 idle workers, 5 hand-off terms, 6 active, 7 stats,
--       8 job prefix, 9 history prefix, 10.. one job hash per job
-- ARGV: 1 job-prefix length, 2 wake channel, 3 1 = write the history (a hand-off's wait),
--       then 4 per job (see enqueue_jobs)
-- Returns one 1 (created) or 0 (duplicate) per job.
local q = {
  wait = KEYS[1], scheduled = KEYS[2], paused = KEYS[3], idle = KEYS[4], handoff = KEYS[5],
  active = KEYS[6], stats = KEYS[7], jp = KEYS[8], hp = '',
}
if ARGV[3] == '1' then q.hp = KEYS[9] end
return enqueue_jobs(q, ARGV[2], tonumber(ARGV[1]), 10, 3, now_ms())
