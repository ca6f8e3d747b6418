-- Settles the reservation held under a lease token: charges what the provider counted, or
-- takes the reservation back.
--
-- KEYS[1] unsettled reservations (sorted set: lease token -> held until)
-- KEYS[2] their terms (hash: lease token -> `<provider> <reservation id> <tokens> <admitted ms>`)
-- KEYS[3] the budgets' key prefix (`<prefix><provider>:<part>`)
--
-- ARGV[1] lease token
-- ARGV[2] tokens to charge, or -1 to take the whole reservation back (the provider refused the
--         request: it counted neither the request nor its tokens)
--
-- Returns 1 when a reservation was settled, 0 when there was none (settled already, or
-- returned because its lease lapsed).

local raw = redis.call('HGET', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[1], ARGV[1])
if not raw then return 0 end
redis.call('HDEL', KEYS[2], ARGV[1])
local provider, id, tokens = string.match(raw, '^(%S+) (%S+) (%d+)')
if not provider then return 0 end
local p = KEYS[3] .. provider .. ':'
local charge = tonumber(ARGV[2])
local old = id .. ':' .. tokens
if charge < 0 then
  redis.call('ZREM', p .. 'req', id)
  for _, part in ipairs({'tpm', 'tpd'}) do
    if redis.call('ZREM', p .. part, old) == 1 then
      redis.call('HINCRBY', p .. 'sums', part, -tonumber(tokens))
    end
  end
  return 1
end
if charge ~= tonumber(tokens) then
  local new = id .. ':' .. string.format('%d', charge)
  for _, part in ipairs({'tpm', 'tpd'}) do
    local at = redis.call('ZSCORE', p .. part, old)
    if at then
      redis.call('ZREM', p .. part, old)
      redis.call('ZADD', p .. part, at, new)
      redis.call('HINCRBY', p .. 'sums', part, charge - tonumber(tokens))
    end
  end
end
return 1
