-- Set or clear the runtime limit of one semaphore, fleet-wide, and wake waiters (a higher limit
-- may have made room).
--
-- KEYS[1] runtime limit overrides hash   KEYS[2] set of every semaphore name in use
-- ARGV[1] name   ARGV[2] new limit, or "" to clear the override   ARGV[3] release channel

if ARGV[2] == '' then
  redis.call('HDEL', KEYS[1], ARGV[1])
else
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
end
redis.call('SADD', KEYS[2], ARGV[1])
redis.call('PUBLISH', ARGV[3], ARGV[1])
return 1
