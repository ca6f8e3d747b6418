-- Count job ARGV[1] in a group of at most ARGV[2] unfinished jobs before it is enqueued (when
-- something must happen between the admission and the enqueue).
-- KEYS: 1 the group zset, 2 job prefix
-- ARGV: 1 job id, 2 the group's cap, 3 the group's TTL (s)
-- Returns 1 (counted) or 0 (the group is full: not counted).
if group_admit(KEYS[1], ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), KEYS[2], now_ms()) then
  return 1
end
return 0
