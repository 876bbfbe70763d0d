-- Gives a reserved job back to the front of its queue without counting the attempt or a
-- recovery (shutdown); fenced by the lease token; wakes listeners on commit. A job whose
-- cancel was requested is cancelled (6) instead.
-- $1 id uuid, $2 token uuid, $3 channel text, $4 fallback shard int2.
-- Returns changed (1 or 0), repeated (this token's release was written already), woken.
WITH upd AS (
    UPDATE {s}.jobs SET
        state = CASE WHEN cancel_requested THEN 6 ELSE 0 END, attempt = greatest(attempt - 1, 0), lease = NULL, lease_expires = NULL,
        done_token = $2::uuid, done_state = 0, run_at = '-infinity', updated_at = now()
    WHERE id = $1::uuid AND lease = $2::uuid AND state = 2
    RETURNING queue, state
),
-- The count row: one no other transaction holds, locked here and joined below (a
-- locking subquery in the UPDATE's own WHERE would be run again, with another random
-- pick, when the row had changed since the statement began, and the update lost).
pick AS (
    SELECT shard FROM {s}.counts ORDER BY random() LIMIT 1 FOR UPDATE SKIP LOCKED
),
counted AS (
    UPDATE {s}.counts c SET running = running - 1,
        ready = ready + (SELECT count(*) FROM upd WHERE state = 0)
    FROM (SELECT coalesce((SELECT shard FROM pick), $4::int2) AS shard) p
    WHERE c.shard = p.shard AND EXISTS (SELECT 1 FROM upd)
),
woken AS (
    SELECT pg_notify($3::text, queue) FROM upd WHERE state = 0
)
SELECT (SELECT count(*) FROM upd)::int8 AS changed,
       EXISTS (SELECT 1 FROM {s}.jobs WHERE id = $1::uuid AND done_token = $2::uuid
                                          AND coalesce(done_state, 0) = 0) AS repeated,
       (SELECT count(*) FROM woken)::int8 AS woken
