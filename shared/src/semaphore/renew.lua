-- Extend a lease on every named semaphore, only if it is still live in all of them.
--
-- KEYS[1]   holder-info hash
-- KEYS[2]   unsettled budget reservations (token -> held until): one held under this token is
--           renewed with the lease
-- KEYS[3..] the lease sorted sets the token was granted in
-- ARGV[1] lease token   ARGV[2] lease TTL in ms
-- ARGV[3] release channel   ARGV[4] the names, comma-separated (published if permits are freed)
--
-- Returns {1} when renewed. Otherwise the lease is lost: the token is removed everywhere (so a late
-- renewal can never resurrect an expired lease) and the reply is {0}.

if redis.replicate_commands then
  redis.replicate_commands()
end

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local token = ARGV[1]
local ttl = tonumber(ARGV[2])

local alive = true
for i = 3, #KEYS do
  local score = redis.call('ZSCORE', KEYS[i], token)
  if (not score) or tonumber(score) <= now then
    alive = false
    break
  end
end

if alive then
  local expires = now + ttl
  for i = 3, #KEYS do
    redis.call('ZADD', KEYS[i], 'XX', expires, token)
  end
  redis.call('ZADD', KEYS[2], 'XX', expires, token)
  return {1}
end

-- Lost. Entries still live somewhere (only possible after outside tampering) hold permits that
-- are freed here, so waiters are told.
local freed = 0
for i = 3, #KEYS do
  local score = redis.call('ZSCORE', KEYS[i], token)
  if score then
    if tonumber(score) > now then
      freed = freed + 1
    end
    redis.call('ZREM', KEYS[i], token)
  end
end
redis.call('HDEL', KEYS[1], token)
if freed > 0 then
  redis.call('PUBLISH', ARGV[3], ARGV[4])
end
return {0}
