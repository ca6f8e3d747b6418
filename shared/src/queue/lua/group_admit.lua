-- Count job ARGV[1] in a group of at most ARGV[2] unfinished jobs before it is enqueued (when
-- something must happen between the admission and the enqueue): it is also recorded as pending
-- (admitted, no job yet) for a minute, so a concurrent admission at the cap keeps counting it.
-- KEYS: 1 the group set, 2 the group's pending zset, 3 job prefix
-- ARGV: 1 job id, 2 the group's cap, 3 the group's TTL (s)
-- Returns 1 (counted) or 0 (the group is full: not counted).
local now = now_ms()
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - 60000)
redis.call('ZADD', KEYS[2], now, ARGV[1])
redis.call('EXPIRE', KEYS[2], 60)
if group_admit(KEYS[1], KEYS[2], ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), KEYS[3], now) then
  return 1
end
redis.call('ZREM', KEYS[2], ARGV[1])
return 0
