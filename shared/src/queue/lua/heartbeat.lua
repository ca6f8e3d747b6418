-- Renew the leases of a worker's running jobs.
-- KEYS: 1 active, 2.. one job hash per lease
-- ARGV: 1 lease ms, 2.. one active member (`<fence>:<id>`) per lease
-- Returns {lease_until, then per lease: 1 held, 2 held but cancel requested, 0 lost}
local lease_until = now_ms() + tonumber(ARGV[1])
local n = #KEYS - 1
local members = {}
for i = 1, n do members[i] = ARGV[1 + i] end
local scores = redis.call('ZMSCORE', KEYS[1], unpack(members))
local out = {lease_until}
local lease_s = int(lease_until)
local zargs = {}
for i = 1, n do
  if scores[i] then
    zargs[#zargs + 1] = lease_s
    zargs[#zargs + 1] = members[i]
    if redis.call('HEXISTS', KEYS[1 + i], 'c') == 1 then out[#out + 1] = 2 else out[#out + 1] = 1 end
  else
    out[#out + 1] = 0
  end
end
if #zargs > 0 then batched('ZADD', KEYS[1], zargs) end
return out
