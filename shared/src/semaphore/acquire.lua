-- Acquire one lease on every named semaphore, or on none of them.
--
-- KEYS[1]   holder-info hash (lease token -> JSON)
-- KEYS[2]   runtime limit overrides hash (name -> limit)
-- KEYS[3]   fencing counter
-- KEYS[4]   set of every semaphore name in use
-- KEYS[5]   adaptive state hash (name -> effective limit; absent = the ceiling)
-- KEYS[6..] one lease sorted set per name, in the order of the names below
--
-- ARGV[1] lease token          ARGV[2] lease TTL in ms
-- ARGV[3] holder id            ARGV[4] job id            ARGV[5] attempt
-- ARGV[6] at most this many expired leases are purged per set and call (bounds the work)
-- ARGV[7] '1' when adaptive concurrency is on (the effective limits in KEYS[5] apply), else '0'
-- ARGV[8..] pairs of (name, default limit); a default of -1 means "no default"
--
-- Returns {1, fence} when granted; {0, wait_ms, full names...} when refused, where wait_ms is how
-- long until every full set has room through lease expiry alone (-1 when unknown); or {-1, name}
-- when a name has neither an override nor a default limit. A refusal writes nothing.

-- Redis < 5 replicates scripts verbatim, which forbids writes after TIME; effects replication
-- (the default from Redis 5, the only mode from Redis 7) makes TIME safe.
if redis.replicate_commands then
  redis.replicate_commands()
end

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

local holders, limits, fence_key, names_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local token = ARGV[1]
local ttl = tonumber(ARGV[2])
local batch = tonumber(ARGV[6])
local adaptive_on = ARGV[7] == '1'
local adaptive = KEYS[5]
local count = #KEYS - 5

local names = {}
local full = {}
local wait = 0
local wait_known = true

for i = 1, count do
  local key = KEYS[5 + i]
  local name = ARGV[6 + 2 * i]
  local default = tonumber(ARGV[7 + 2 * i])
  names[i] = name

  -- A lease is live while its expiry is strictly after now. Dead ones are removed here, a bounded
  -- batch at a time; counting below only ever looks at live ones, so a backlog cannot inflate it.
  local dead = redis.call('ZRANGEBYSCORE', key, '-inf', now, 'LIMIT', 0, batch)
  if #dead > 0 then
    redis.call('ZREM', key, unpack(dead))
    redis.call('HDEL', holders, unpack(dead))
  end

  local override = redis.call('HGET', limits, name)
  local limit = default
  if override then
    limit = tonumber(override)
  end
  if limit == nil or limit < 0 then
    return {-1, name}
  end
  -- The configured (or overridden) limit is the ceiling; adaptive concurrency may hold the
  -- effective limit below it, never above it and never below 1.
  local effective = adaptive_on and tonumber(redis.call('HGET', adaptive, name))
  if effective and effective >= 1 and effective < limit then
    limit = effective
  end

  local live = redis.call('ZCOUNT', key, '(' .. now, '+inf')
  if live >= limit then
    full[#full + 1] = name
    if limit > 0 then
      -- The set has room again once its (live - limit + 1)-th earliest lease expires.
      local nth = redis.call('ZRANGEBYSCORE', key, '(' .. now, '+inf', 'WITHSCORES',
        'LIMIT', live - limit, 1)
      if nth[2] then
        local ms = tonumber(nth[2]) - now
        if ms > wait then
          wait = ms
        end
      else
        wait_known = false
      end
    else
      -- A limit of zero never frees up through expiry.
      wait_known = false
    end
  end
end

if #full > 0 then
  if not wait_known then
    wait = -1
  end
  local reply = {0, wait}
  for i = 1, #full do
    reply[#reply + 1] = full[i]
  end
  return reply
end

local fence = redis.call('INCR', fence_key)
local expires = now + ttl
for i = 1, count do
  redis.call('ZADD', KEYS[5 + i], expires, token)
end
redis.call('SADD', names_key, unpack(names))
redis.call('HSET', holders, token, cjson.encode({
  token = token,
  holder = ARGV[3],
  job_id = ARGV[4],
  attempt = tonumber(ARGV[5]),
  names = names,
  fence = fence,
  acquired_at_ms = now,
}))
return {1, fence}
