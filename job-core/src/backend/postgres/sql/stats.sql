-- Jobs per state from the 32 count rows (never a scan of the job table).
-- Returns ready, scheduled, running, dead.
SELECT coalesce(sum(ready), 0)::int8, coalesce(sum(scheduled), 0)::int8,
       coalesce(sum(running), 0)::int8, coalesce(sum(dead), 0)::int8
FROM {s}.counts
