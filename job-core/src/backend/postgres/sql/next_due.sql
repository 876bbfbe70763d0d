-- The earliest start time of a job waiting in these queues that is not due yet, in ms since
-- the Unix epoch (NULL: none), so an idle worker sleeps until then instead of polling. One
-- index probe per queue.
-- $1 queues text[].
SELECT (extract(epoch FROM min(w.run_at)) * 1000)::int8
FROM unnest($1::text[]) AS q(name)
CROSS JOIN LATERAL (
    SELECT run_at FROM {s}.jobs
    WHERE queue = q.name AND state IN (0, 1, 3) AND run_at > now()
    ORDER BY run_at
    LIMIT 1
) w
