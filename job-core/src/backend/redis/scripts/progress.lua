-- KEYS: the shared keys (see prelude.lua).
-- ARGV: base, then triples id, token, progress (JSON). Keeps each job's progress where the
-- token is its lease; a job no longer held is left alone. Returns nothing.
for i = 2, #ARGV - 2, 3 do
  local k = jk(ARGV[i])
  local f = fields(k, 'l')
  if f and f[1] == ARGV[i + 1] then redis.call('HSET', k, 'pg', ARGV[i + 2]) end
end
return 0
