-- Registers a worker as idle again without fetching (a hand-off used its registration up while
-- it still has free slots); see `fetch_jobs` for what the registration means.
-- KEYS: 1 idle workers, 2 hand-off terms
-- ARGV: 1 worker id, 2 how long it waits before fetching again (ms), 3 its hand-off terms
--       (`<lease ms> <events prefix>`; '' = it takes none)
local now = now_ms()
drop_stale_idle(KEYS[1], KEYS[2], now)
redis.call('ZADD', KEYS[1], int(now + tonumber(ARGV[2]) + 1000), ARGV[1])
if ARGV[3] ~= '' then redis.call('HSET', KEYS[2], ARGV[1], ARGV[3]) end
return 1
