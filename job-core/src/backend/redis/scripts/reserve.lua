-- KEYS: the shared keys (see prelude.lua).
-- ARGV: base, max, lease_ms, promote_limit, n, queue_1..queue_n, token_1..token_max.
-- Returns one flat list of rows: 'job', id, token, has_payload, payload, job, queue,
-- attempt, recoveries, not_before, max_attempts, enqueued (12 items); 'garbage', entry (2).
local max, lease, limit, nq = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local now = now_ms()
local out = {}
local due = redis.call('ZRANGEBYSCORE', K_SCHEDULED, '-inf', now, 'LIMIT', 0, limit)
if #due > 0 then
  zmany('ZREM', K_SCHEDULED, due)
  for _, id in ipairs(due) do
    local f = fields(jk(id), 'q')
    if f and f[1] then
      ready(f[1], id, false)
    else
      garbage(id)
      out[#out + 1] = 'garbage'
      out[#out + 1] = id
    end
  end
end
local expiry = now + lease
local sexpiry, snow = num(expiry), num(now)
local leased, members = 0, {}
local first_token = 6 + nq
for i = 1, nq do
  local q = ARGV[5 + i]
  while leased < max do
    local want = max - leased
    local ids = redis.call('LPOP', rk(q), want)
    if not ids then break end
    for _, id in ipairs(ids) do
      local k = jk(id)
      if not valid_id(id) then
        garbage(id)
        out[#out + 1] = 'garbage'
      out[#out + 1] = id
      else
        local f = fields(k, 's', 'p', 'j', 'q', 'a', 'r', 'nb', 'm', 'e')
        if not f then
          -- A foreign value under a job key: keep its bytes as the payload of a record with
          -- no job name, so it comes back as malformed and is dead-lettered with a reason.
          local kind = redis.call('TYPE', k)['ok']
          local raw = '<redis ' .. kind .. ' value>'
          if kind == 'string' then raw = redis.call('GET', k) end
          redis.call('DEL', k)
          redis.call('HSET', k, 'p', raw, 'q', q)
          f = {false, raw, false, q, false, false, false, false, false}
        end
        local st = f[1]
        if not (f[1] or f[2] or f[3] or f[4] or f[5] or f[6] or f[7] or f[8] or f[9])
          and redis.call('EXISTS', k) == 0 then
          -- No record (a finished job's record expired under a stale entry): set aside.
          garbage(id)
          out[#out + 1] = 'garbage'
      out[#out + 1] = id
        elseif st ~= 'running' and st ~= 'succeeded' and st ~= 'dead' and st ~= 'cancelled' then
          -- (An id that is running or finished is a stale duplicate entry: dropped.)
          local token = ARGV[first_token + leased]
          leased = leased + 1
          -- A first attempt needs no number formatting (tostring costs ~0.7 µs a call). A
          -- stored count that is not a number is passed on as it is (and kept), so the job
          -- comes back malformed instead of as a first attempt.
          local attempt = '1'
          if f[5] then
            local a = tonumber(f[5])
            if a then attempt = tostring(a + 1) else attempt = f[5] end
          end
          redis.call('HSET', k, 's', 'running', 'a', attempt, 'l', token, 'u', snow)
          if not f[4] then redis.call('HSET', k, 'q', q) end
          members[#members + 1] = sexpiry
          members[#members + 1] = id
          local has = '0'
          if f[2] then has = '1' end
          local n = #out
          out[n + 1], out[n + 2], out[n + 3], out[n + 4] = 'job', id, token, has
          out[n + 5], out[n + 6], out[n + 7], out[n + 8] = f[2] or '', f[3] or '', q, attempt
          out[n + 9], out[n + 10], out[n + 11], out[n + 12] = f[6] or '0', f[7] or '', f[8] or '', f[9] or ''
        end
      end
    end
    if #ids < want then break end
  end
  -- Jobs left behind: wake another waiting worker.
  if leased >= max and redis.call('LLEN', rk(q)) > 0 then signal(q) end
end
if #members > 0 then zmany('ZADD', K_LEASED, members) end
return out
