-- Enqueue a batch of jobs, idempotently by id.
-- KEYS: 1 wait, 2 scheduled, 3 paused, 4 idle workers, 5.. one job hash per job
-- ARGV: 1 job-prefix length, 2 wake channel, then 4 per job (see enqueue_jobs)
-- Returns one 1 (created) or 0 (duplicate) per job.
return enqueue_jobs(KEYS[1], KEYS[2], KEYS[3], KEYS[4], ARGV[2], tonumber(ARGV[1]), 5, 2, now_ms())
