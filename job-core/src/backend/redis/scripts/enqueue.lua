-- KEYS: the shared keys (see prelude.lua).
-- ARGV: base, capacity, then either 'each' and per job: id, payload, job, queue,
-- max_attempts, attempt, recoveries, enqueued, not_before ('' = none); or 'same', job,
-- queue, max_attempts, and per job: id, payload, enqueued (fresh jobs of one type, ready at
-- once); or 'unique', key, window_ms, 'window' | 'finished', and one job as for 'each'.
-- Stores jobs in order while capacity allows; an id already stored changes nothing and
-- counts as stored. Returns {stored, status}: 'ok', 'full' (the rest did not fit), or
-- 'corrupt' (the next job's key holds another type); for 'unique', {stored, status,
-- holder}, where status 'existing' means another job holds the key (`holder`, its id) and
-- nothing was stored.
local cap = tonumber(ARGV[2])
local live = tonumber(redis.call('GET', K_LIVE) or '0')
local now = nil
local stored, added, status = 0, 0, 'ok'
-- Whether the job under key `k` is 'new' (its room under capacity is taken), 'stored'
-- already (nothing to do), or stops the batch: 'corrupt' (another type under the key) or
-- 'full'.
local function admit(k)
  if redis.call('EXISTS', k) == 1 then
    if redis.call('TYPE', k)['ok'] ~= 'hash' then return 'corrupt' end
    return 'stored'
  end
  if live + added >= cap then return 'full' end
  added = added + 1
  return 'new'
end
if ARGV[3] == 'same' then
  -- Fresh jobs of one type: one RPUSH for all of them (in slices), at the end.
  local job, q, m = ARGV[4], ARGV[5], ARGV[6]
  local ready = {}
  -- Existence first: a stored id (this batch again after its reply was lost, or another
  -- job's id) keeps its record exactly as it is, payload and enqueue time included. One
  -- EXISTS for the whole batch answers for all of them in the common case (none stored);
  -- only a batch that holds a stored id is checked job by job.
  local keys = {}
  for i = 7, #ARGV, 3 do keys[#keys + 1] = jk(ARGV[i]) end
  local any_stored = #keys > 0 and redis.call('EXISTS', unpack(keys)) > 0
  local seen = {}
  for i = 7, #ARGV, 3 do
    local id = ARGV[i]
    local k = jk(id)
    local verdict
    if any_stored then
      verdict = admit(k)
    elseif seen[id] then
      -- The same id twice in one batch: the first one stored it.
      verdict = 'stored'
    elseif live + added >= cap then
      verdict = 'full'
    else
      added = added + 1
      verdict = 'new'
    end
    seen[id] = true
    if verdict == 'corrupt' or verdict == 'full' then
      status = verdict
      break
    end
    if verdict == 'new' then
      redis.call('HSET', k, 'p', ARGV[i + 1], 'j', job, 'q', q, 'm', m, 'e', ARGV[i + 2])
      ready[#ready + 1] = id
    end
    stored = stored + 1
  end
  if #ready > 0 then
    local rq, len = rk(q), 0
    for i = 1, #ready, 400 do
      len = redis.call('RPUSH', rq, unpack(ready, i, math.min(i + 399, #ready)))
    end
    if len == #ready then
      -- The queue was empty: make sure it is known (the set only grows), and wake a worker.
      redis.call('SADD', K_QUEUES, q)
      signal(q)
    end
  end
  live_add(added)
  return {stored, status}
end
-- Stores the jobs given as for 'each' from ARGV[from] on.
local function each(from)
  for i = from, #ARGV, 9 do
    local id, p, job, q, m, a, r, e, nb = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4], ARGV[i + 5], ARGV[i + 6], ARGV[i + 7], ARGV[i + 8]
    local k = jk(id)
    local verdict = admit(k)
    if verdict == 'corrupt' or verdict == 'full' then
      status = verdict
      break
    end
    if verdict == 'new' then
      redis.call('HSET', k, 'p', p, 'j', job, 'q', q, 'm', m, 'e', e)
      if a ~= '0' then redis.call('HSET', k, 'a', a) end
      if r ~= '0' then redis.call('HSET', k, 'r', r) end
      local at = tonumber(nb)
      if at then
        now = now or now_ms()
        redis.call('HSET', k, 'nb', nb)
      end
      if at and at > now then
        redis.call('HSET', k, 's', 'scheduled')
        redis.call('SADD', K_QUEUES, q)
        redis.call('ZADD', K_SCHEDULED, at, id)
      elseif redis.call('RPUSH', rk(q), id) == 1 then
        -- The queue was empty: make sure it is known (the set only grows), and wake a worker.
        redis.call('SADD', K_QUEUES, q)
        signal(q)
      end
    end
    stored = stored + 1
  end
  live_add(added)
end
if ARGV[3] == 'unique' then
  -- The key lives beside the jobs (same hash tag), a hash of the job holding it (`i`) and
  -- how it holds it (`m`), expiring with its window. Held 'finished': a holder that has
  -- ended (or whose record is gone) frees it.
  local uk, window, mode, id = B .. 'unique:' .. ARGV[4], ARGV[5], ARGV[6], ARGV[7]
  local fresh = redis.call('EXISTS', jk(id)) == 0
  if fresh then
    local h = fields(uk, 'i', 'm')
    local held = h and h[1]
    if held and held ~= id then
      local holds = true
      if h[2] == 'finished' then
        local f = fields(jk(held), 's')
        local s = f and f[1]
        holds = redis.call('EXISTS', jk(held)) == 1
          and s ~= 'succeeded' and s ~= 'dead' and s ~= 'cancelled'
      end
      if holds then return {0, 'existing', held} end
    end
  end
  each(7)
  if fresh and stored == 1 then
    redis.call('DEL', uk)
    redis.call('HSET', uk, 'i', id, 'm', mode)
    redis.call('PEXPIRE', uk, window)
  end
  return {stored, status, ''}
end
each(4)
return {stored, status}
