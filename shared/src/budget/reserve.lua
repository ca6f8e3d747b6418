-- Reserve one request and `cost` tokens of a provider's rate budget, or nothing.
--
-- KEYS[1] the provider's requests (sorted set: reservation id -> admitted at, ms)
-- KEYS[2] the provider's minute of tokens (sorted set: `<reservation id>:<tokens>` -> admitted at)
-- KEYS[3] the provider's day of tokens (same shape)
-- KEYS[4] the provider's sums hash: `tpm`, `tpd` (tokens in the two sets), `seq` (ids)
-- KEYS[5] unsettled reservations (sorted set: lease token -> held until, ms)
-- KEYS[6] their terms (hash: lease token -> `<provider> <reservation id> <tokens> <admitted ms>`)
-- KEYS[7] the budgets' key prefix (`<prefix><provider>:<part>`), to return another provider's
--         expired reservations
--
-- ARGV[1] lease token   ARGV[2] tokens to reserve   ARGV[3] how long the reservation holds
-- unless renewed (ms)   ARGV[4] requests per window (-1: no limit)   ARGV[5] tokens per minute
-- window (-1: none)   ARGV[6] tokens per day window (-1: none)   ARGV[7] the minute window (ms)
-- ARGV[8] the day window (ms)   ARGV[9] the provider   ARGV[10] how many requests may go back to
-- back before the rest are paced at one per minute ÷ requests-per-window (-1: not paced)
-- ARGV[11] the longest the caller waits for its turn (ms): a turn due within it — paced, or when
-- a full window makes room — is reserved now, in order, instead of refused
--
-- Returns {1, reservation id} when reserved; {2, reservation id, ms} when reserved for a turn
-- that many ms from now (the caller sends the request then); {0, wait ms, limit name, limit, current} when a
-- limit has no room (nothing is written but the pruning), where wait is how long until the
-- windows alone make room; {-1, limit name, limit} when the cost alone exceeds a limit.

if redis.replicate_commands then
  redis.replicate_commands()
end

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

local held, terms, prefix = KEYS[5], KEYS[6], KEYS[7]
local token = ARGV[1]
local cost = tonumber(ARGV[2])
local hold = tonumber(ARGV[3])
local rpm, tpm, tpd = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local minute, day = tonumber(ARGV[7]), tonumber(ARGV[8])

-- The tokens a window member `<id>:<tokens>` stands for.
local function amount(member)
  return tonumber(string.match(member, ':(%d+)$')) or 0
end

-- Takes back reservation `id` of `tokens` tokens of `provider`: its request and its tokens.
local function refund(provider, id, tokens)
  local p = prefix .. provider .. ':'
  redis.call('ZREM', p .. 'req', id)
  local member = id .. ':' .. tokens
  for _, part in ipairs({'tpm', 'tpd'}) do
    if redis.call('ZREM', p .. part, member) == 1 then
      redis.call('HINCRBY', p .. 'sums', part, -tonumber(tokens))
    end
  end
end

-- Reservations whose holder stopped renewing them (its lease expired: the worker died) are
-- returned, a bounded batch per call.
local lapsed = redis.call('ZRANGEBYSCORE', held, '-inf', now, 'LIMIT', 0, 16)
for _, tok in ipairs(lapsed) do
  local raw = redis.call('HGET', terms, tok)
  if raw then
    local provider, id, tokens = string.match(raw, '^(%S+) (%S+) (%d+)')
    if provider then refund(provider, id, tokens) end
    redis.call('HDEL', terms, tok)
  end
  redis.call('ZREM', held, tok)
end

-- Drops the members of token window `key` older than `since`, taking their tokens off `field`
-- of the sums hash.
local function prune(key, field, since)
  local old = redis.call('ZRANGEBYSCORE', key, '-inf', since)
  if #old == 0 then return end
  local gone = 0
  for _, m in ipairs(old) do gone = gone + amount(m) end
  redis.call('ZREMRANGEBYSCORE', key, '-inf', since)
  if redis.call('ZCARD', key) == 0 then
    redis.call('HSET', KEYS[4], field, 0)
  else
    redis.call('HINCRBY', KEYS[4], field, -gone)
  end
end

redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - minute)
prune(KEYS[2], 'tpm', now - minute)
prune(KEYS[3], 'tpd', now - day)

-- How long until the oldest members of token window `key` (of length `window`) free enough for
-- `cost` more tokens when it holds `sum`, walking at most 1,000 members (beyond, the whole
-- window: a conservative answer).
local function token_wait(key, window, sum, limit)
  local need = sum + cost - limit
  local rows = redis.call('ZRANGE', key, 0, 999, 'WITHSCORES')
  local freed = 0
  for i = 1, #rows, 2 do
    freed = freed + amount(rows[i])
    if freed >= need then
      return math.max(1, tonumber(rows[i + 1]) + window - now + 1)
    end
  end
  return window
end

local wait, name, limit, current = 0, nil, 0, 0
local function refuse(w, n, l, c)
  if name == nil or w > wait then wait, name, limit, current = w, n, l, c end
end

local n = 0
if rpm >= 0 then
  n = redis.call('ZCARD', KEYS[1])
  if rpm == 0 then return {-1, 'rpm', rpm} end
  if n + 1 > rpm then
    local nth = redis.call('ZRANGE', KEYS[1], n - rpm, n - rpm, 'WITHSCORES')
    local w = minute
    if nth[2] then w = math.max(1, tonumber(nth[2]) + minute - now + 1) end
    refuse(w, 'rpm', rpm, n + 1)
  end
end
-- Pacing (GCRA on requests): `tat` is when the next request would be on schedule; one may go
-- while it is at most `burst - 1` intervals ahead of now — and no further ahead than the window
-- has room for, so the burst is what an idle window lends: under sustained load the requests
-- go one per interval, the window never fills, and none waits for it to free (a burst taken
-- from a window that is never let to empty would leave a gap once per window, as it slid out).
local burst = tonumber(ARGV[10])
local tat = nil
local paced = 0
if rpm > 0 and burst >= 1 then
  local interval = minute / rpm
  tat = tonumber(redis.call('HGET', KEYS[4], 'tat')) or now
  if tat < now then tat = now end
  local lend = math.max(1, math.min(burst, rpm - n))
  local ahead = tat - (lend - 1) * interval - now
  -- Less than a millisecond ahead is on time: `tat` is kept to the thousandth, so requests
  -- within one millisecond would otherwise be paced by its rounding.
  if ahead >= 1 then paced = math.ceil(ahead) end
  tat = tat + interval
end
local sums = redis.call('HMGET', KEYS[4], 'tpm', 'tpd')
for _, c in ipairs({{tpm, KEYS[2], minute, 'tpm', tonumber(sums[1]) or 0},
                    {tpd, KEYS[3], day, 'tpd', tonumber(sums[2]) or 0}}) do
  local lim, key, window, lname, sum = c[1], c[2], c[3], c[4], c[5]
  if lim >= 0 then
    if cost > lim then return {-1, lname, lim} end
    if sum + cost > lim then refuse(token_wait(key, window, sum, lim), lname, lim, sum + cost) end
  end
end
-- A window with no room now, or a paced turn, is a wait: one within the caller's patience
-- (ARGV[11]) is taken now, in the order of the reservations, and counted from when it is due —
-- so callers waiting for a full window get its room in the order they asked instead of racing
-- for it; a longer wait is refused. While a window is full there is no burst: its turns are
-- spaced by the pacing interval from the schedule, so they do not bunch where the window frees
-- (and free the next window's room bunched in turn).
local delay = paced
if name then
  if wait > delay then delay = wait end
  if tat then
    local interval = minute / rpm
    delay = math.max(delay, math.ceil(tat - interval - now))
    tat = now + delay + interval
  end
  if delay > tonumber(ARGV[11]) then return {0, delay, name, limit, current} end
elseif paced > tonumber(ARGV[11]) then
  return {0, paced, 'rpm', rpm, redis.call('ZCARD', KEYS[1]) + 1}
end
local at = now + delay

local id = tostring(redis.call('HINCRBY', KEYS[4], 'seq', 1))
if tat then redis.call('HSET', KEYS[4], 'tat', string.format('%.3f', tat)) end
redis.call('ZADD', KEYS[1], at, id)
local member = id .. ':' .. string.format('%d', cost)
if tpm >= 0 then
  redis.call('ZADD', KEYS[2], at, member)
  redis.call('HINCRBY', KEYS[4], 'tpm', cost)
end
if tpd >= 0 then
  redis.call('ZADD', KEYS[3], at, member)
  redis.call('HINCRBY', KEYS[4], 'tpd', cost)
end
redis.call('ZADD', held, at + hold, token)
redis.call('HSET', terms, token, ARGV[9] .. ' ' .. id .. ' ' .. string.format('%d', cost) .. ' ' .. at)
if delay > 0 then return {2, id, delay} end
return {1, id}
