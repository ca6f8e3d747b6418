-- The per-minute history of a queue (see `history_write`): the last `minutes` minutes, the
-- current one included, oldest first. Cost: one HGETALL per minute, at most a day of them.
-- KEYS: 1 history prefix
-- ARGV: 1 minutes
-- Returns {now ms, then per minute: its start (Unix s), its hash as a field/value list}
local now = now_ms()
local last = math.floor(now / 60000) * 60
local out = {now}
for i = tonumber(ARGV[1]) - 1, 0, -1 do
  local m = last - i * 60
  out[#out + 1] = m
  out[#out + 1] = redis.call('HGETALL', KEYS[1] .. int(m))
end
return out
