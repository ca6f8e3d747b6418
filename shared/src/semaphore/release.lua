-- Release a lease on every named semaphore. Idempotent: releasing twice removes nothing the
-- second time and announces nothing.
--
-- KEYS[1]   holder-info hash
-- KEYS[2..] the lease sorted sets the token was granted in
-- ARGV[1] lease token   ARGV[2] release channel   ARGV[3] the names, comma-separated
--
-- Returns how many lease entries were removed.

local removed = 0
for i = 2, #KEYS do
  removed = removed + redis.call('ZREM', KEYS[i], ARGV[1])
end
redis.call('HDEL', KEYS[1], ARGV[1])
if removed > 0 then
  redis.call('PUBLISH', ARGV[2], ARGV[3])
end
return removed
