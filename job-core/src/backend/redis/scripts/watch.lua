-- KEYS: the shared keys (see prelude.lua).
-- ARGV: base, id. A waiter watches job `id`: the script that ends it will publish its id on
-- `{p}:ended` (see announce in prelude.lua). Returns 'watching', 'finished' (it has ended
-- already: there is nothing left to announce, and nothing is recorded) or 'missing'.
local id = ARGV[2]
local k = jk(id)
if redis.call('EXISTS', k) == 0 then return 'missing' end
local f = fields(k, 's')
local st = f and f[1]
if st == 'succeeded' or st == 'dead' or st == 'cancelled' then return 'finished' end
redis.call('SADD', B .. 'watched', id)
return 'watching'
