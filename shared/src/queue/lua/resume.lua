-- Resume a paused queue and wake idle workers when jobs are waiting.
-- KEYS: 1 paused, 2 wait
-- ARGV: 1 wake channel
redis.call('DEL', KEYS[1])
if redis.call('LLEN', KEYS[2]) > 0 then redis.call('PUBLISH', ARGV[1], '') end
return 1
