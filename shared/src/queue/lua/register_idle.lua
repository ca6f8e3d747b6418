-- Registers a worker as idle again without fetching (a hand-off used its registration up while
-- it still has free slots); see `fetch_jobs` for what the registration means.
-- KEYS: 1 idle workers, 2 hand-off terms
-- ARGV: 1 worker id, 2 how long it waits before fetching again (ms), 3 1 = it takes
--       hand-offs, 4 its lease ms, 5 its job events channel prefix
register_idle(KEYS[1], KEYS[2], ARGV[1], tonumber(ARGV[2]), ARGV[3] == '1', tonumber(ARGV[4]),
  ARGV[5], now_ms())
return 1
