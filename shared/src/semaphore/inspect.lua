-- Read the state of several semaphores at one instant of the Redis clock. Writes nothing.
--
-- KEYS[1]   holder-info hash
-- KEYS[2]   runtime limit overrides hash
-- KEYS[3]   adaptive state hash
-- KEYS[4..] one lease sorted set per name, in the order of the names below
-- ARGV pairs of (name, default limit; -1 = no default)
--
-- Returns one entry per name: {limit (-1 when none; the ceiling), overridden (0/1), effective
-- limit (the adaptive one when below the ceiling; -1 when none), lease, lease, ...} where
-- each lease is {token, ms until expiry, holder JSON or nil}. Only live leases are listed.

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

local out = {}
for i = 4, #KEYS do
  local name = ARGV[2 * (i - 3) - 1]
  local limit = tonumber(ARGV[2 * (i - 3)])
  local overridden = 0
  local override = redis.call('HGET', KEYS[2], name)
  if override then
    limit = tonumber(override)
    overridden = 1
  end
  local effective = limit
  local adapted = tonumber(redis.call('HGET', KEYS[3], name))
  if adapted and limit >= 0 and adapted >= 1 and adapted < limit then
    effective = adapted
  end
  local entry = {limit, overridden, effective}
  local leases = redis.call('ZRANGEBYSCORE', KEYS[i], '(' .. now, '+inf', 'WITHSCORES')
  for j = 1, #leases, 2 do
    local token = leases[j]
    local info = redis.call('HGET', KEYS[1], token)
    entry[#entry + 1] = {token, tonumber(leases[j + 1]) - now, info}
  end
  out[#out + 1] = entry
end
return out
