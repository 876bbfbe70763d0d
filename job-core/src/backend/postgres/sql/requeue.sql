-- Moves a dead job back to the end of its queue with a fresh attempt budget (same id).
-- $1 id uuid, $2 channel text, $3 fallback shard int2.
-- Returns changed (1 or 0), woken.
WITH upd AS (
    UPDATE {s}.jobs SET
        state = 0, attempt = 0, recoveries = 0, not_before = NULL, lease = NULL,
        lease_expires = NULL, done_token = NULL, last_error = NULL, dead_letter = NULL,
        cancel_requested = NULL,
        run_at = now(), seq = nextval('{s}.seq'), updated_at = now()
    WHERE id = $1::uuid AND state = 5
    RETURNING queue
),
-- The count row: one no other transaction holds, locked here and joined below (a
-- locking subquery in the UPDATE's own WHERE would be run again, with another random
-- pick, when the row had changed since the statement began, and the update lost).
pick AS (
    SELECT shard FROM {s}.counts ORDER BY random() LIMIT 1 FOR UPDATE SKIP LOCKED
),
counted AS (
    UPDATE {s}.counts c SET dead = dead - 1, ready = ready + 1
    FROM (SELECT coalesce((SELECT shard FROM pick), $3::int2) AS shard) p
    WHERE c.shard = p.shard AND EXISTS (SELECT 1 FROM upd)
),
woken AS (
    SELECT pg_notify($2::text, queue) FROM upd
)
SELECT (SELECT count(*) FROM upd)::int8 AS changed, (SELECT count(*) FROM woken)::int8 AS woken
