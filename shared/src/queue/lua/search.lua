-- The jobs of one state whose payload contains a text, from a bounded scan of the state's
-- index: at most ARGV[2] entries and ARGV[6] payload bytes are read, so the cost is bounded by
-- the scan, never by the size of the queue.
-- KEYS: 1 the state's index (wait list, capped list or sorted set), 2 job prefix, 3 fair prefix
--       (queued: the key lists, after the wait list; see `queued_ids`), 4 stats
-- ARGV: 1 how to read the index (as list.lua: wait | list | asc | desc | active), 2 entries to
--       scan at most, 3 state, 4 text (plain, case-sensitive), 5 matches wanted at most,
--       6 payload bytes to read at most
-- Returns {entries scanned, index length, payload bytes read, then per match: id, index score
--          (or -1), then the job fields of FIELDS in list.lua}
local how = ARGV[1]
local max = tonumber(ARGV[2])
local want = tonumber(ARGV[5])
local budget = tonumber(ARGV[6])
local ids, scores, len = {}, {}, 0
if how == 'wait' then
  len = redis.call('LLEN', KEYS[1]) + (tonumber(redis.call('HGET', KEYS[4], 'fair')) or 0)
elseif how == 'list' then
  len = redis.call('LLEN', KEYS[1])
else
  len = redis.call('ZCARD', KEYS[1])
end
if max > 0 then
  if how == 'wait' then
    for _, id in ipairs(queued_ids(KEYS[1], KEYS[3], 0, max)) do
      ids[#ids + 1] = id; scores[#scores + 1] = -1
    end
  elseif how == 'list' then
    local r = redis.call('LRANGE', KEYS[1], 0, max - 1)
    for i = 1, #r do ids[#ids + 1] = r[i]; scores[#scores + 1] = -1 end
  else
    local r
    if how == 'asc' or how == 'active' then
      r = redis.call('ZRANGE', KEYS[1], 0, max - 1, 'WITHSCORES')
    else
      r = redis.call('ZRANGE', KEYS[1], 0, max - 1, 'REV', 'WITHSCORES')
    end
    for i = 1, #r, 2 do
      local id = r[i]
      if how == 'active' then
        local _, rest = split_member(id)
        id = rest
      end
      ids[#ids + 1] = id
      scores[#scores + 1] = tonumber(r[i + 1])
    end
  end
end
local scanned = 0
local out = {0, len, 0}
local found = 0
for i, id in ipairs(ids) do
  if found >= want or budget <= 0 then break end
  scanned = scanned + 1
  local jk = KEYS[2] .. id
  local h = redis.call('HMGET', jk, 's', 'p')
  if h[1] == ARGV[3] and h[2] then
    budget = budget - #h[2]
    if string.find(h[2], ARGV[4], 1, true) then
      found = found + 1
      out[#out + 1] = id
      out[#out + 1] = scores[i]
      local f = redis.call('HMGET', jk, 's', 'p', 'a', 'm', 'e', 'r', 'f', 'w', 't', 'd', 'c', 'why', 'errors')
      for k = 1, #f do out[#out + 1] = f[k] end
    end
  end
end
out[1] = scanned
out[3] = tonumber(ARGV[6]) - budget
return out
