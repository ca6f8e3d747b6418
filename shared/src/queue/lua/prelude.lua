-- Shared helpers, prepended to every queue script.
--
-- The active set's members are `<fence>:<id>`: a member is present exactly while that attempt
-- runs, so one ZMSCORE or ZREM checks the fence of a whole batch of acks.
--
-- Job hash fields: p payload, s state, a attempts started, m max attempts, e enqueued (ms),
-- r run at (ms), f fence of the current attempt, w worker holding the lease, t started (ms),
-- d finished (ms), x result, c cancel requested, why dead reason, errors JSON list.
-- Times are Unix milliseconds from the Redis clock, never the client's.

-- Splits an active-set member `<fence>:<id>` into fence and id (ids may contain ':').
local function split_member(m)
  local sep = string.find(m, ':', 1, true)
  return string.sub(m, 1, sep - 1), string.sub(m, sep + 1)
end

-- `n`, a whole number, as a decimal string. Lua 5.1 formats numbers as floats (`%.14g`, and
-- Redis formats numeric command arguments with `%.17g`), which is slow; `%d` is not. Per-job
-- numbers go to Redis through this.
local function int(n)
  return string.format('%d', n)
end

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- Runs `cmd key items...` in slices, so no call unpacks more than Lua's C stack allows.
-- `items` of ZADD are score/member pairs, so the slice size stays even.
local function batched(cmd, key, items)
  local n = #items
  local i = 1
  local ret = 0
  while i <= n do
    local j = math.min(i + 999, n)
    ret = redis.call(cmd, key, unpack(items, i, j))
    i = j + 1
  end
  return ret
end

-- Publishes a wake-up when the wait list went from empty to non-empty and the queue runs.
local function wake(len_after, pushed, paused_key, channel)
  if pushed > 0 and len_after == pushed and redis.call('EXISTS', paused_key) == 0 then
    redis.call('PUBLISH', channel, '')
  end
end

-- Publishes a wake-up when `id` became the earliest entry of sorted set `zkey` (a delayed or
-- retrying job due sooner than any other), so idle workers re-fetch and learn the new earliest
-- due time instead of sleeping through it.
local function wake_if_first(zkey, id, paused_key, channel)
  local first = redis.call('ZRANGE', zkey, 0, 0)
  if first[1] == id and redis.call('EXISTS', paused_key) == 0 then
    redis.call('PUBLISH', channel, '')
  end
end

-- Pops the most recently registered live idle worker of sorted set `idle_key` (member: worker
-- id, score: until when the registration holds, ms), dropping registrations of workers that died
-- idle on the way. Returns its id and its hand-off terms (`<lease ms> <events prefix>`, from hash
-- `handoff_key`; false when it takes no hand-offs), or nil when no worker is idle.
local function take_idle(idle_key, handoff_key, now)
  for _ = 1, 16 do
    local w = redis.call('ZPOPMAX', idle_key)
    if #w == 0 then return nil end
    local terms = redis.call('HGET', handoff_key, w[1])
    if terms then redis.call('HDEL', handoff_key, w[1]) end
    if tonumber(w[2]) >= now then return w[1], terms end
  end
  return nil
end

-- Wakes one idle worker (see `take_idle`) with an empty message on its own channel
-- `<channel>:<worker id>`; a worker nobody listens for any more (it died, or its subscription is
-- reconnecting) is skipped for the next. Returns whether a worker was woken.
local function wake_one(idle_key, handoff_key, channel, now)
  for _ = 1, 16 do
    local w = take_idle(idle_key, handoff_key, now)
    if w == nil then return false end
    if redis.call('PUBLISH', channel .. ':' .. w, '') > 0 then return true end
  end
  return false
end

-- Drops the idle registrations that expired, and their hand-off terms.
local function drop_stale_idle(idle_key, handoff_key, now)
  local old = redis.call('ZRANGEBYSCORE', idle_key, '-inf', '(' .. int(now), 'LIMIT', 0, 100)
  if #old > 0 then
    redis.call('ZREM', idle_key, unpack(old))
    redis.call('HDEL', handoff_key, unpack(old))
  end
end

-- Registers `worker` idle until `now + idle_ms` plus a second of slack (dropping expired
-- registrations first), with its hand-off terms when it takes hand-offs (see `hand_off`).
local function register_idle(idle_key, handoff_key, worker, idle_ms, takes_hand_offs, lease_ms, events, now)
  drop_stale_idle(idle_key, handoff_key, now)
  redis.call('ZADD', idle_key, int(now + idle_ms + 1000), worker)
  if takes_hand_offs then
    redis.call('HSET', handoff_key, worker, int(lease_ms) .. ' ' .. events)
  end
end

-- The per-minute history of a queue: one hash per minute, `<history prefix><minute start in
-- Unix seconds>`, with counters `completed`, `failed`, `retried`, `dead` and two histograms of
-- durations in ms, `wait:<bucket>` (from when the attempt's job was last due to its start,
-- counted in the minute it started) and `run:<bucket>` (from its start to its end, counted in
-- the minute it ended). Each hash expires HISTORY_TTL seconds after its first write, so the
-- history holds the last day and a bit, whatever the traffic.
local HISTORY_TTL = 90000

-- math.frexp, looked up once: the history's bucket of a duration of `ms` milliseconds is 0
-- below 1 ms, then b (1 to 22) for [2^(b-1), 2^b) ms — the exponent frexp returns — and 23
-- from 2^22 ms (70 minutes) up. The per-job loops compute it inline (a Lua function call per
-- job costs as much as the rest of the history together).
local frexp = math.frexp

-- The history bucket of a duration of `ms` milliseconds (see `frexp`).
local function history_bucket(ms)
  if ms < 1 then return 0 end
  local _, e = frexp(ms)
  if e > 23 then return 23 end
  return e
end

-- What one script call adds to the history: counters by name, and the two histograms' counts
-- by bucket number (`wait`, `run`), so a job costs no string work.
local function history_new()
  return { wait = {}, run = {} }
end

-- Counts one duration of `ms` milliseconds in histogram `name` ('wait' or 'run') of `add`.
local function history_add(add, name, ms)
  local hist = add[name]
  local b = history_bucket(ms)
  hist[b] = (hist[b] or 0) + 1
end

-- Adds `add` (see `history_new`) to the history hash of the minute of `now` under prefix `hp`,
-- one HINCRBY per field. The hash gets its expiry when it is new: when the first HINCRBY
-- answers exactly what it added, the field (and so maybe the hash) was new, and `EXPIRE … NX`
-- sets the expiry unless the hash had one — one command per minute and writer, not per call.
local function history_write(hp, add, now)
  local hk = hp .. int(math.floor(now / 60000) * 60)
  local fresh = nil
  for field, n in pairs(add) do
    if field == 'wait' or field == 'run' then
      for b, c in pairs(n) do
        local v = redis.call('HINCRBY', hk, field .. ':' .. b, c)
        if fresh == nil then fresh = v == c end
      end
    elseif n ~= 0 then
      local v = redis.call('HINCRBY', hk, field, n)
      if fresh == nil then fresh = v == n end
    end
  end
  if fresh then redis.call('EXPIRE', hk, HISTORY_TTL, 'NX') end
end

-- Marks job hash `jk` as running attempt `a_s` (fence `fence_s`) of `worker` since `now_s` (all
-- strings), and with `events` not '' publishes the job's `started` event on `<events><id>`.
-- The caller adds the attempt's member to the active set.
local function start_attempt(jk, id, a_s, fence_s, worker, now_s, events)
  redis.call('HSET', jk, 's', 'running', 'a', a_s, 'f', fence_s, 'w', worker, 't', now_s)
  if events ~= '' then
    redis.call('PUBLISH', events .. id, '{"event":"started","attempt":' .. a_s .. '}')
  end
end

-- Hands the new job `id` (hash `jk`, already stored as queued) straight to idle worker `worker`
-- whose hand-off terms are `terms`: publishes the lease and the payload on the worker's own
-- channel and, when the worker's subscription received it, leases the job's first attempt to
-- that worker as a fetch would (and, with the history prefix `q.hp` not '', counts its wait, 0,
-- in the history). The message is
-- `<fence> <attempt> <max attempts> <enqueued ms> <lease until ms> <id length>\n<id><payload>`.
-- Returns false when nobody received it (the job is left as it was).
local function hand_off(q, jk, id, payload, max, worker, terms, channel, now)
  local sp = string.find(terms, ' ', 1, true)
  local lease_ms = tonumber(string.sub(terms, 1, sp - 1))
  local events = string.sub(terms, sp + 1)
  local fence_s = int(redis.call('HINCRBY', q.stats, 'fence', 1))
  local now_s = int(now)
  local until_s = int(now + lease_ms)
  local heard = redis.call('PUBLISH', channel .. ':' .. worker, fence_s .. ' 1 ' .. max .. ' '
    .. now_s .. ' ' .. until_s .. ' ' .. #id .. '\n' .. id .. payload)
  if heard == 0 then return false end
  start_attempt(jk, id, '1', fence_s, worker, now_s, events)
  redis.call('ZADD', q.active, until_s, fence_s .. ':' .. id)
  if q.hp ~= '' then history_write(q.hp, { wait = { [0] = 1 } }, now) end
  return true
end

-- Appends one record to the job's error history, keeping the last `keep`.
local function push_error(jk, keep, attempt, now, kind, message)
  local raw = redis.call('HGET', jk, 'errors')
  local list = {}
  if raw then list = cjson.decode(raw) end
  list[#list + 1] = { attempt = attempt, at = now, kind = kind, error = message }
  while #list > keep and #list > 0 do table.remove(list, 1) end
  if #list > 0 then
    redis.call('HSET', jk, 'errors', cjson.encode(list))
  end
end

-- Moves a job to the dead set and trims the set to `dead_max`, deleting trimmed jobs.
-- Trimmed job hashes are built from `jp` (a KEYS-passed prefix sharing the queue's hash tag).
local function to_dead(jk, id, dead_key, jp, now, reason, dead_max)
  redis.call('HSET', jk, 's', 'dead', 'why', reason, 'd', now)
  redis.call('ZADD', dead_key, now, id)
  local excess = redis.call('ZCARD', dead_key) - dead_max
  if excess > 0 then
    local old = redis.call('ZPOPMIN', dead_key, math.min(excess, 100))
    for i = 1, #old, 2 do
      redis.call('DEL', jp .. old[i])
    end
  end
end

-- Records that job `id` ended by cancellation: its hash expires after the retention time, and
-- its id goes to the head of the cancelled index (list `cancelled_key`, newest first), trimmed
-- to `keep` entries like the completed index.
local function finish_cancelled(jk, id, stats_key, cancelled_key, keep, now, ttl)
  redis.call('HSET', jk, 's', 'cancelled', 'd', now)
  redis.call('PEXPIRE', jk, ttl)
  redis.call('HINCRBY', stats_key, 'cancelled', 1)
  redis.call('LPUSH', cancelled_key, id)
  redis.call('LTRIM', cancelled_key, 0, keep - 1)
end

-- Fair share. A job enqueued with a fairness key `g` (kept in its hash, field `g`) waits in
-- list `<fp>k:<g>` instead of the wait list, where `fp` is the queue's KEYS-passed fair prefix.
-- List `<fp>ring` holds each key with a backlog exactly once; its right end is the head, whose
-- key gives the next keyed job. List `<fp>fresh` holds the keys that had nothing waiting when
-- their job arrived (sparse keys: an interactive client between calls), oldest at the right end:
-- they are served before the ring, one job each, then join the ring's tail if they still have
-- jobs (the new-flow rule of fair queueing, as FQ-CoDel has it). A key is in one of the two
-- lists exactly while its own list is not empty. Hash `<fp>weight` holds the keys' weights other
-- than 1, hash `<fp>credit` how many jobs in a row the key at the head has given, and the
-- stats hash's `fair` field how many ids wait in the key lists (ghosts included), so counts
-- stay O(1).

-- Puts job `id` of fairness key `g` in its key's list: at the tail (a new job), or with
-- `front` at the head (a job put back or due again, so it keeps its place within its key).
-- A key whose list was empty joins the fresh keys (a new job), or with `front` the ring's head.
local function fair_push(fp, stats_key, g, id, front)
  local lk = fp .. 'k:' .. g
  local len
  if front then len = redis.call('RPUSH', lk, id) else len = redis.call('LPUSH', lk, id) end
  if len == 1 then
    if front then redis.call('RPUSH', fp .. 'ring', g) else redis.call('LPUSH', fp .. 'fresh', g) end
  end
  redis.call('HINCRBY', stats_key, 'fair', 1)
end

-- How many ids wait in the queue's key lists (see `fair_push`).
local function fair_len(stats_key)
  return tonumber(redis.call('HGET', stats_key, 'fair')) or 0
end

-- Takes the next keyed id: the oldest fresh key's, else the ring's head key's next id. The
-- ring's key then goes to the ring's tail, or
-- leaves the ring when its list is empty; with `weighted` (some key has a weight), a key of
-- weight w stays at the head for w ids in a row. A constant number of commands, however many
-- keys wait. Returns the id (false when the key's list was empty) and whether a key was
-- there at all; the caller decrements the `fair` counter.
local function fair_pop(fp, weighted)
  local ring = fp .. 'ring'
  -- A fresh key first: one job, then the ring's tail if it has more.
  local fresh = redis.call('RPOP', fp .. 'fresh')
  if fresh then
    local flk = fp .. 'k:' .. fresh
    local fid = redis.call('RPOP', flk)
    if redis.call('LLEN', flk) > 0 then redis.call('LPUSH', ring, fresh) end
    return fid, true
  end
  local g = redis.call('LINDEX', ring, -1)
  if not g then return false, false end
  local lk = fp .. 'k:' .. g
  local id = redis.call('RPOP', lk)
  if redis.call('LLEN', lk) == 0 then
    redis.call('RPOP', ring)
    if weighted then redis.call('HDEL', fp .. 'credit', g) end
  else
    local w = 1
    if weighted then w = tonumber(redis.call('HGET', fp .. 'weight', g)) or 1 end
    if w <= 1 then
      redis.call('LMOVE', ring, ring, 'RIGHT', 'LEFT')
    elseif redis.call('HINCRBY', fp .. 'credit', g, 1) >= w then
      redis.call('HDEL', fp .. 'credit', g)
      redis.call('LMOVE', ring, ring, 'RIGHT', 'LEFT')
    end
  end
  return id, true
end

-- Moves up to `limit` due jobs of sorted set `zkey` to the head of the wait list (earliest due
-- first); a keyed job goes to the head of its key's list instead (`fair_push`; `fp` '' = the
-- queue has no fair lists). Returns how many moved.
local function promote(zkey, wait_key, jp, now, limit, fp, stats_key)
  local ids = redis.call('ZRANGEBYSCORE', zkey, '-inf', now, 'LIMIT', 0, limit)
  local n = #ids
  if n == 0 then return 0 end
  batched('ZREM', zkey, ids)
  local rev = {}
  for i = n, 1, -1 do
    local jk = jp .. ids[i]
    redis.call('HSET', jk, 's', 'queued')
    local g = fp ~= '' and redis.call('HGET', jk, 'g')
    if g then
      fair_push(fp, stats_key, g, ids[i], true)
    else
      rev[#rev + 1] = ids[i]
    end
  end
  -- RPOP takes the rightmost first: push the latest due first so the earliest is taken first.
  if #rev > 0 then batched('RPUSH', wait_key, rev) end
  return n
end

-- Hand-offs carry the payload over pub/sub: larger payloads are fetched instead.
local HAND_OFF_MAX = 65536

-- Counts job `id` in group set `group` (the group expires `ttl` seconds after its last
-- admission), which may hold at most `max` unfinished jobs: at the cap, the members whose job
-- (under job prefix `jp`) finished are removed first, and those without a job at all unless zset
-- `pending` says they were admitted less than a minute ago to be enqueued after some work. Returns
-- true when `id` is counted; false, and `id` not counted, when the group is full.
local function group_admit(group, pending, id, max, ttl, jp, now)
  redis.call('SADD', group, id)
  redis.call('EXPIRE', group, ttl)
  if redis.call('SCARD', group) <= max then return true end
  for _, m in ipairs(redis.call('SMEMBERS', group)) do
    if m ~= id then
      local s = redis.call('HGET', jp .. m, 's')
      local ended = s == 'completed' or s == 'dead' or s == 'cancelled'
      if not s then
        local at = redis.call('ZSCORE', pending, m)
        ended = not at or tonumber(at) < now - 60000
      end
      if ended then redis.call('SREM', group, m) end
    end
  end
  if redis.call('SCARD', group) <= max then return true end
  redis.call('SREM', group, id)
  return false
end

-- Creates the jobs whose keys are KEYS[first..] and whose arguments are four per job from
-- ARGV[base + 1]: payload, delay ms, run-at ms (0 = none), max attempts. A job whose hash
-- already exists is left alone. `q` holds the queue's keys: wait, scheduled, paused, idle,
-- handoff, active, stats, jp (job prefix), hp (history prefix, '' = no history), and for keyed
-- jobs fp (fair prefix), g (their fairness key) and gw (its weight): keyed jobs wait in their
-- key's list (`fair_push`) instead of the wait list. Ready jobs wake one idle worker
-- (`wake_one`); a lone ready job with nothing queued anywhere is handed straight to that
-- worker when it takes hand-offs (`hand_off`), which saves the worker its fetch. Returns one 1
-- (created) or 0 (duplicate) per job.
local function enqueue_jobs(q, channel, plen, first, base, now)
  local res = {}
  local ready = {}
  local ready_args = {}
  local later = {}
  local soonest, soonest_id = nil, nil
  local n = #KEYS - first + 1
  local now_s = int(now)
  local g = q.g
  for i = 1, n do
    local jk = KEYS[first + i - 1]
    local b = base + (i - 1) * 4
    if redis.call('EXISTS', jk) == 1 then
      res[i] = 0
    else
      local id = string.sub(jk, plen + 1)
      local at = tonumber(ARGV[b + 3])
      local delay = tonumber(ARGV[b + 2])
      if delay > 0 then at = now + delay end
      local s = 'queued'
      if at > now then s = 'scheduled' end
      if s == 'scheduled' then
        local at_s = int(at)
        redis.call('HSET', jk, 'p', ARGV[b + 1], 's', 'scheduled', 'm', ARGV[b + 4], 'e', now_s, 'r', at_s)
        later[#later + 1] = at_s
        later[#later + 1] = id
        if soonest == nil or at < soonest then soonest, soonest_id = at, id end
      else
        redis.call('HSET', jk, 'p', ARGV[b + 1], 's', 'queued', 'm', ARGV[b + 4], 'e', now_s)
        ready[#ready + 1] = id
        ready_args[#ready] = b
      end
      if g then redis.call('HSET', jk, 'g', g) end
      res[i] = 1
    end
  end
  if g and #res > 0 then
    if q.gw ~= 1 then
      redis.call('HSET', q.fp .. 'weight', g, int(q.gw))
    else
      redis.call('HDEL', q.fp .. 'weight', g)
    end
  end
  -- Queues the ready ids: keyed ones in their key's list, the others in the wait list.
  -- Returns how many jobs wait after the push: in the wait list and the key lists for keyed
  -- ids; in the wait list alone for unkeyed ones (no command more per call on that path: a
  -- wake-up announced while only key lists held jobs reaches workers that are busy anyway).
  local function push(ids)
    if g then
      for _, id in ipairs(ids) do fair_push(q.fp, q.stats, g, id, false) end
      return redis.call('LLEN', q.wait) + fair_len(q.stats)
    end
    return batched('LPUSH', q.wait, ids)
  end
  if #ready > 0 and redis.call('EXISTS', q.paused) == 1 then
    push(ready)
  elseif #ready == 1 and redis.call('LLEN', q.wait) == 0 and fair_len(q.stats) == 0 then
    local id, b = ready[1], ready_args[1]
    local w, terms = take_idle(q.idle, q.handoff, now)
    if not (w and terms and #ARGV[b + 1] <= HAND_OFF_MAX
        and hand_off(q, q.jp .. id, id, ARGV[b + 1], ARGV[b + 4], w, terms, channel, now)) then
      push(ready)
      -- The worker taken (if it still listens) is woken alone; else another idle one; with
      -- none, every worker.
      local woken = w and redis.call('PUBLISH', channel .. ':' .. w, '') > 0
      if not woken and not wake_one(q.idle, q.handoff, channel, now) then
        redis.call('PUBLISH', channel, '')
      end
    end
  elseif #ready > 0 then
    local len = push(ready)
    -- One idle worker is woken (it wakes the next if it cannot take everything); with none
    -- registered idle, a queue that was empty is announced to every worker.
    if not wake_one(q.idle, q.handoff, channel, now) then
      wake(len, #ready, q.paused, channel)
    end
  end
  if #later > 0 then
    batched('ZADD', q.scheduled, later)
    wake_if_first(q.scheduled, soonest_id, q.paused, channel)
  end
  return res
end

-- Leases up to `want` queued jobs to `worker`, after promoting due delayed and retrying jobs.
-- `k` holds the queue's keys: wait, scheduled, retry, active, stats, paused, job prefix, idle,
-- handoff, fp (fair prefix; absent or '' = no key lists). The wait list is served first, then
-- the key lists round-robin (`fair_pop`). With `events` not '', each leased job's `started` event is published on
-- `<events><id>`. A fetch that comes back short registers `worker` as idle for `idle_ms` (plus
-- a second of slack), so the next enqueue wakes it alone (`wake_one` on channel `wake`) or,
-- with `takes_hand_offs`, hands it its job (`hand_off`); one that fills every slot it asked for
-- unregisters it and, when jobs are left, wakes another idle worker.
-- With `add` not nil, each leased job's wait (from when it was last due: enqueued, or its
-- run-at time) is counted in `add` for the history.
-- Returns {paused, next_due_in_ms or -1, more, lease_until, then per job:
--          id, payload, attempt, max attempts, enqueued at, fence}
local function fetch_jobs(k, want, worker, lease_ms, chunk, events, wake, idle_ms, takes_hand_offs, add, now)
  if redis.call('EXISTS', k.paused) == 1 then return {1, -1, 0, 0} end
  local lease_until = now + lease_ms
  local jp = k.jp

  local fp = k.fp or ''
  promote(k.scheduled, k.wait, jp, now, chunk, fp, k.stats)
  promote(k.retry, k.wait, jp, now, chunk, fp, k.stats)

  -- Ids whose job is no longer queued (cancelled, removed, expired) are skipped and dropped
  -- here, once each; the budget bounds the work of one call however many there are.
  local budget = want * 4 + 64
  local ids, rows = {}, {}
  local waits = add and add.wait
  local ghosts = 0
  local more = 0
  -- Takes popped keyed id `id` when its job is still queued (as the wait list's loop below).
  local function take(id)
    local jk = jp .. id
    local h = redis.call('HMGET', jk, 's', 'p', 'a', 'm', 'e', 'r')
    if h[1] == 'queued' then
      ids[#ids + 1] = id
      h[1] = jk
      rows[#rows + 1] = h
      if waits then
        -- Waited since it was last due: enqueued (e), or its run-at time (r) when later.
        local due = tonumber(h[5]) or now
        local r = tonumber(h[6])
        if r and r > due then due = r end
        local ms, b = now - due, 0
        if ms >= 1 then
          local _, e = frexp(ms)
          if e > 23 then b = 23 else b = e end
        end
        waits[b] = (waits[b] or 0) + 1
      end
    else
      ghosts = ghosts + 1
    end
  end
  -- The wait list first (unkeyed jobs), then the key lists round-robin.
  local wait_empty = false
  while #ids < want do
    if budget <= 0 then more = 1 break end
    local ask = math.min(want - #ids, budget)
    local popped = redis.call('RPOP', k.wait, ask)
    if not popped then wait_empty = true break end
    budget = budget - #popped
    -- Inline (not `take`): a Lua function call per job is measurable on this path.
    for _, id in ipairs(popped) do
      local jk = jp .. id
      local h = redis.call('HMGET', jk, 's', 'p', 'a', 'm', 'e', 'r')
      if h[1] == 'queued' then
        ids[#ids + 1] = id
        h[1] = jk
        rows[#rows + 1] = h
        if waits then
          local due = tonumber(h[5]) or now
          local r = tonumber(h[6])
          if r and r > due then due = r end
          local ms, b = now - due, 0
          if ms >= 1 then
            local _, e = frexp(ms)
            if e > 23 then b = 23 else b = e end
          end
          waits[b] = (waits[b] or 0) + 1
        end
      else
        ghosts = ghosts + 1
      end
    end
    if #popped < ask then wait_empty = true break end
  end
  local fair_taken = 0
  if fp ~= '' and wait_empty and #ids < want then
    local weighted = redis.call('EXISTS', fp .. 'weight') == 1
    while #ids < want do
      if budget <= 0 then more = 1 break end
      local id, any = fair_pop(fp, weighted)
      if not any then break end
      budget = budget - 1
      if id then
        fair_taken = fair_taken + 1
        take(id)
      end
    end
    if fair_taken > 0 then redis.call('HINCRBY', k.stats, 'fair', -fair_taken) end
  end
  if ghosts > 0 then redis.call('HINCRBY', k.stats, 'ghosts', -ghosts) end

  local n = #ids
  local next_due = -1
  if n < want and more == 0 then
    local due = nil
    for _, z in ipairs({k.scheduled, k.retry}) do
      local r = redis.call('ZRANGE', z, 0, 0, 'WITHSCORES')
      if #r > 0 then
        local s = tonumber(r[2])
        if due == nil or s < due then due = s end
      end
    end
    if due ~= nil then next_due = math.max(0, due - now) end
  end

  if n < want and more == 0 then
    register_idle(k.idle, k.handoff, worker, idle_ms, takes_hand_offs, lease_ms, events, now)
  elseif n > 0 then
    if redis.call('ZREM', k.idle, worker) == 1 then redis.call('HDEL', k.handoff, worker) end
    if n == want and (redis.call('LLEN', k.wait) > 0 or (fp ~= '' and fair_len(k.stats) > 0)) then
      wake_one(k.idle, k.handoff, wake, now)
    end
  end

  local out = {0, next_due, more, lease_until}
  if n == 0 then return out end

  local last = redis.call('HINCRBY', k.stats, 'fence', n)
  local first = last - n
  local now_s, lease_s = int(now), int(lease_until)
  local zargs = {}
  for i = 1, n do
    local id = ids[i]
    local h = rows[i]
    local a = (tonumber(h[3]) or 0) + 1
    local a_s = int(a)
    local fence = first + i
    local fence_s = int(fence)
    start_attempt(h[1], id, a_s, fence_s, worker, now_s, events)
    zargs[#zargs + 1] = lease_s
    zargs[#zargs + 1] = fence_s .. ':' .. id
    out[#out + 1] = id
    out[#out + 1] = h[2]
    out[#out + 1] = a
    out[#out + 1] = tonumber(h[4]) or 1
    out[#out + 1] = tonumber(h[5]) or 0
    out[#out + 1] = fence
  end
  batched('ZADD', k.active, zargs)
  return out
end

-- Stores the results of `n` attempts and releases their leases, only where the attempt is
-- still the running one (its `<fence>:<id>` member is in the active set). The attempts' job
-- hashes are KEYS[kj..]; their members, results and start times (ms, as the fetch that leased
-- them said) come three per attempt in ARGV from ARGV[a]. Completed ids go to the head of the
-- completed index, trimmed to `keep`. With `events` not '', each completed job's `finished`
-- event is published on `<events><id>`. `ttl` (ms) is a string. With `add` not nil, the
-- completions and their run times are counted in `add` for the history (the caller writes it).
-- Returns one 1 (done) or 0 (lease lost) per attempt, and how many were done.
local function complete_jobs(k_active, k_completed, k_stats, kj, n, a, plen, ttl, keep, events, add, now)
  local res = {}
  if n == 0 then return res, 0 end
  local members = {}
  for i = 1, n do members[i] = ARGV[a + 3 * (i - 1)] end
  local scores = redis.call('ZMSCORE', k_active, unpack(members))
  local now_s = int(now)
  local done, live, seen = {}, {}, {}
  local runs = add and add.run
  for i = 1, n do
    local m = members[i]
    if scores[i] and not seen[m] then
      seen[m] = true
      local jk = KEYS[kj + i - 1]
      local b = a + 3 * (i - 1)
      redis.call('HSET', jk, 's', 'completed', 'x', ARGV[b + 1], 'd', now_s)
      redis.call('PEXPIRE', jk, ttl)
      local id = string.sub(jk, plen + 1)
      if events ~= '' then redis.call('PUBLISH', events .. id, '{"event":"finished"}') end
      if runs then
        local started = tonumber(ARGV[b + 2])
        if started and started > 0 then
          local ms, k = now - started, 0
          if ms >= 1 then
            local _, e = frexp(ms)
            if e > 23 then k = 23 else k = e end
          end
          runs[k] = (runs[k] or 0) + 1
        end
      end
      done[#done + 1] = id
      live[#live + 1] = m
      res[i] = 1
    else
      res[i] = 0
    end
  end
  if #done > 0 then
    batched('ZREM', k_active, live)
    batched('LPUSH', k_completed, done)
    redis.call('LTRIM', k_completed, 0, keep - 1)
    redis.call('HINCRBY', k_stats, 'completed', #done)
    if add then add['completed'] = (add['completed'] or 0) + #done end
  end
  return res, #done
end

-- Up to `limit` queued ids from `offset`, in the order fetches serve the lists: the wait list
-- from the end fetch pops, then each key list of the fresh keys and of the ring (fair prefix
-- `fp`, '' = none) from their head keys, each from its next id — key by key, not interleaved as the round-robin runs
-- them. Keys whose ids all lie before `offset` cost one LLEN each, so the cost stays
-- proportional to offset + limit.
local function queued_ids(wait_key, fp, offset, limit)
  local out = {}
  local wlen = redis.call('LLEN', wait_key)
  if offset < wlen then
    local r = redis.call('LRANGE', wait_key, -(offset + limit), -(offset + 1))
    for i = #r, 1, -1 do out[#out + 1] = r[i] end
    offset = 0
  else
    offset = offset - wlen
  end
  if fp == '' then return out end
  for _, keys_list in ipairs({fp .. 'fresh', fp .. 'ring'}) do
    local at = 0
    while #out < limit do
      local keys = redis.call('LRANGE', keys_list, -(at + 100), -(at + 1))
      if #keys == 0 then break end
      at = at + #keys
      for i = #keys, 1, -1 do
        if #out >= limit then break end
        local lk = fp .. 'k:' .. keys[i]
        local len = redis.call('LLEN', lk)
        if offset >= len then
          offset = offset - len
        else
          local want = limit - #out
          local r = redis.call('LRANGE', lk, -(offset + want), -(offset + 1))
          for j = #r, 1, -1 do out[#out + 1] = r[j] end
          offset = 0
        end
      end
      if #keys < 100 then break end
    end
  end
  return out
end
