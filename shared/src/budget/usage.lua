-- What a provider's rate budget holds now (read-only).
--
-- KEYS[1] requests   KEYS[2] minute of tokens   KEYS[3] day of tokens
-- ARGV[1] the minute window (ms)   ARGV[2] the day window (ms)
--
-- Returns {requests in the minute, tokens in the minute, tokens in the day}.

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local minute, day = tonumber(ARGV[1]), tonumber(ARGV[2])
local function sum(key, since)
  local total = 0
  for _, m in ipairs(redis.call('ZRANGEBYSCORE', key, '(' .. since, '+inf')) do
    total = total + (tonumber(string.match(m, ':(%d+)$')) or 0)
  end
  return total
end
return {
  redis.call('ZCOUNT', KEYS[1], '(' .. (now - minute), '+inf'),
  sum(KEYS[2], now - minute),
  sum(KEYS[3], now - day),
}
