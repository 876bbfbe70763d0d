-- Cancels job $1: a waiting one (queued 0, scheduled 1, retrying 3) becomes cancelled (6) now;
-- a reserved one (2) is marked `cancel_requested`; a finished one is left alone.
-- $1 id uuid, $2 fallback shard int2.
-- Returns the state the job was in (no row: no such job).
WITH locked AS (
    SELECT id, state FROM {s}.jobs WHERE id = $1::uuid FOR UPDATE
),
removed AS (
    UPDATE {s}.jobs j SET state = 6, updated_at = now()
    FROM locked l
    WHERE j.id = l.id AND l.state IN (0, 1, 3)
    RETURNING l.state AS was
),
requested AS (
    UPDATE {s}.jobs j SET cancel_requested = true
    FROM locked l
    WHERE j.id = l.id AND l.state = 2
    RETURNING j.id
),
-- The count row: one no other transaction holds, locked here and joined below (a
-- locking subquery in the UPDATE's own WHERE would be run again, with another random
-- pick, when the row had changed since the statement began, and the update lost).
pick AS (
    SELECT shard FROM {s}.counts ORDER BY random() LIMIT 1 FOR UPDATE SKIP LOCKED
),
counted AS (
    UPDATE {s}.counts c SET
        ready = ready - (SELECT count(*) FROM removed WHERE was = 0),
        scheduled = scheduled - (SELECT count(*) FROM removed WHERE was IN (1, 3))
    FROM (SELECT coalesce((SELECT shard FROM pick), $2::int2) AS shard) p
    WHERE c.shard = p.shard AND EXISTS (SELECT 1 FROM removed)
)
SELECT l.state, (SELECT count(*) FROM requested)::int8 AS requested FROM locked l
