-- The running attempts of a queue per worker, from at most ARGV[1] entries of the active set.
-- KEYS: 1 active, 2 job prefix
-- ARGV: 1 entries to read at most
-- Returns {entries read, active set size, then per worker: its lease holder id, attempts}
local members = redis.call('ZRANGE', KEYS[1], 0, tonumber(ARGV[1]) - 1)
local counts = {}
for _, m in ipairs(members) do
  local _, id = split_member(m)
  local w = redis.call('HGET', KEYS[2] .. id, 'w')
  if w then counts[w] = (counts[w] or 0) + 1 end
end
local out = {#members, redis.call('ZCARD', KEYS[1])}
for w, n in pairs(counts) do
  out[#out + 1] = w
  out[#out + 1] = n
end
return out
