-- Resume a paused queue and wake idle workers when jobs are waiting.
-- KEYS: 1 paused, 2 wait, 3 stats (its `fair` counter: ids waiting in key lists)
-- ARGV: 1 wake channel
redis.call('DEL', KEYS[1])
if redis.call('LLEN', KEYS[2]) > 0 or fair_len(KEYS[3]) > 0 then redis.call('PUBLISH', ARGV[1], '') end
return 1
