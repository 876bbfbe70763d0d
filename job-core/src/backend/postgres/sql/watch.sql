-- A waiter watches job $1: its end will be announced (see schema_v5.sql). Only a live job
-- (queued 0, scheduled 1, running 2, retrying 3) is marked; one already watched is left as
-- it is. Returns the job's state (no row: no such job).
-- $1 id uuid.
WITH marked AS (
    UPDATE {s}.jobs SET watched = true
    WHERE id = $1::uuid AND state IN (0, 1, 2, 3) AND NOT watched
    RETURNING state
)
SELECT coalesce((SELECT state FROM marked), (SELECT state FROM {s}.jobs WHERE id = $1::uuid))
