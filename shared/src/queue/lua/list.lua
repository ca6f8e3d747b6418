-- One page of the jobs in one state; cost proportional to offset + page size.
-- KEYS: 1 the state's index (wait list or sorted set), 2 job prefix, 3 fair prefix (the key
--       lists, read after the wait list; see `queued_ids`)
-- ARGV: 1 how to read the index (wait | list | asc | desc | active), 2 offset, 3 limit, 4 state
-- Returns per job: id, index score (or -1), then the job fields of FIELDS below.
-- Ids whose job left the state (stale wait-list entries, expired completed jobs) are skipped,
-- so a page may be shorter than `limit`.
local how = ARGV[1]
local offset = tonumber(ARGV[2])
local limit = tonumber(ARGV[3])
if limit <= 0 then return {} end
local ids, scores = {}, {}
if how == 'wait' then
  -- Fetch pops from the right: page from the right end, in the order the lists are served.
  for _, id in ipairs(queued_ids(KEYS[1], KEYS[3] or '', offset, limit)) do
    ids[#ids + 1] = id; scores[#scores + 1] = -1
  end
elseif how == 'list' then
  -- A capped list kept newest first (the completed and cancelled indexes).
  local r = redis.call('LRANGE', KEYS[1], offset, offset + limit - 1)
  for i = 1, #r do ids[#ids + 1] = r[i]; scores[#scores + 1] = -1 end
else
  local r
  if how == 'asc' or how == 'active' then
    r = redis.call('ZRANGE', KEYS[1], offset, offset + limit - 1, 'WITHSCORES')
  else
    r = redis.call('ZRANGE', KEYS[1], offset, offset + limit - 1, 'REV', 'WITHSCORES')
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
local out = {}
for i, id in ipairs(ids) do
  local h = redis.call('HMGET', KEYS[2] .. id, 's', 'p', 'a', 'm', 'e', 'r', 'f', 'w', 't', 'd', 'c', 'why', 'errors')
  if h[1] == ARGV[4] then
    out[#out + 1] = id
    out[#out + 1] = scores[i]
    for k = 1, #h do out[#out + 1] = h[k] end
  end
end
return out
