-- Records one provider call's usage: adds it to the sums of its session, tool and model, keeps
-- each sum for the retention after this call, and notes the names in the dimension indexes
-- (pruning names whose sums have expired).
--
-- KEYS[1] session sums   KEYS[2] tool sums   KEYS[3] model sums
-- KEYS[4] sessions index KEYS[5] tools index KEYS[6] models index
-- ARGV: session (empty: not counted per session), tool, model, provider,
--       prompt, completion, cached, total, calls, retention (ms)
local now_t = redis.call('TIME')
local now = tonumber(now_t[1]) * 1000 + math.floor(tonumber(now_t[2]) / 1000)
local retention = tonumber(ARGV[10])
local fields = {'prompt', 'completion', 'cached', 'total', 'calls'}

local function add(key)
  for i, field in ipairs(fields) do
    local n = tonumber(ARGV[4 + i])
    if n > 0 then
      redis.call('HINCRBY', key, field, n)
    end
  end
  redis.call('PEXPIRE', key, retention)
end

local function index(key, name)
  redis.call('ZADD', key, now, name)
  redis.call('ZREMRANGEBYSCORE', key, '-inf', '(' .. (now - retention))
  redis.call('PEXPIRE', key, retention)
end

if ARGV[1] ~= '' then
  add(KEYS[1])
  index(KEYS[4], ARGV[1])
end
add(KEYS[2])
index(KEYS[5], ARGV[2])
add(KEYS[3])
redis.call('HSET', KEYS[3], 'provider', ARGV[4])
index(KEYS[6], ARGV[3])
return redis.call('HGET', KEYS[1], 'total') or 0
