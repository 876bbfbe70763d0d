-- KEYS: the shared keys (see prelude.lua).
-- ARGV: base, budget. Sweeps expired finished records; returns 1 when more may be due.
if sweep(now_ms(), tonumber(ARGV[2])) then return 1 end
return 0
