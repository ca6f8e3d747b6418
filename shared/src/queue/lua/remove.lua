-- Delete a job (in any state, or only in state ARGV[3]), with its index entries.
-- KEYS: 1 job hash, 2 scheduled, 3 retry, 4 active, 5 dead, 6 stats
-- ARGV: 1 job id, 2 cancel channel, 3 the state the job must be in ('' = any)
-- Returns 1 removed, 0 not found, 2 left alone (not in that state).
local jk = KEYS[1]
local h = redis.call('HMGET', jk, 's', 'f')
local s = h[1]
if not s then return 0 end
if ARGV[3] ~= '' and s ~= ARGV[3] then return 2 end
local id = ARGV[1]
if s == 'queued' then
  redis.call('HINCRBY', KEYS[6], 'ghosts', 1)
elseif s == 'scheduled' then
  redis.call('ZREM', KEYS[2], id)
elseif s == 'retrying' then
  redis.call('ZREM', KEYS[3], id)
elseif s == 'running' then
  redis.call('ZREM', KEYS[4], (h[2] or '') .. ':' .. id)
  redis.call('PUBLISH', ARGV[2], id)
elseif s == 'dead' then
  redis.call('ZREM', KEYS[5], id)
end
-- A completed or cancelled job's entry in its index (a capped list) is left to age out:
-- listing skips ids whose job is gone.
redis.call('DEL', jk)
return 1
