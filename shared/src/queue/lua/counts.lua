-- One consistent snapshot of a queue's sizes.
-- KEYS: 1 wait, 2 scheduled, 3 retry, 4 active, 5 dead, 6 stats, 7 paused, 8 fair ring,
--       9 fresh fair keys
-- Returns {wait length, scheduled, retrying, running, dead, completed, cancelled, ghosts, paused,
--          ids in the key lists (fair share), keys waiting (the ring's and the fresh ones)}
local st = redis.call('HMGET', KEYS[6], 'completed', 'cancelled', 'ghosts', 'fair')
return {
  redis.call('LLEN', KEYS[1]),
  redis.call('ZCARD', KEYS[2]),
  redis.call('ZCARD', KEYS[3]),
  redis.call('ZCARD', KEYS[4]),
  redis.call('ZCARD', KEYS[5]),
  tonumber(st[1]) or 0,
  tonumber(st[2]) or 0,
  tonumber(st[3]) or 0,
  redis.call('EXISTS', KEYS[7]),
  tonumber(st[4]) or 0,
  redis.call('LLEN', KEYS[8]) + redis.call('LLEN', KEYS[9]),
}
