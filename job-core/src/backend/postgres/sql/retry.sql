-- The attempt failed and may be retried at $3 (ms since the Unix epoch): fenced by the lease
-- token; wakes listeners with `queue <ms>` on commit. A job whose cancel was requested is
-- cancelled (6) instead.
-- $1 id uuid, $2 token uuid, $3 at_ms int8, $4 error text, $5 channel text, $6 fallback shard int2.
-- Returns changed (1 or 0), repeated (this token's retry was written already), woken.
WITH upd AS (
    UPDATE {s}.jobs SET
        state = CASE WHEN cancel_requested THEN 6 ELSE 3 END, lease = NULL, lease_expires = NULL, done_token = $2::uuid, done_state = 3,
        last_error = $4::text, not_before = $3::int8,
        run_at = to_timestamp($3::int8 / 1000.0), updated_at = now()
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
        scheduled = scheduled + (SELECT count(*) FROM upd WHERE state = 3)
    FROM (SELECT coalesce((SELECT shard FROM pick), $6::int2) AS shard) p
    WHERE c.shard = p.shard AND EXISTS (SELECT 1 FROM upd)
),
woken AS (
    SELECT pg_notify($5::text, queue || ' ' || $3::int8::text) FROM upd WHERE state = 3
)
SELECT (SELECT count(*) FROM upd)::int8 AS changed,
       EXISTS (SELECT 1 FROM {s}.jobs WHERE id = $1::uuid AND done_token = $2::uuid
                                          AND coalesce(done_state, 3) = 3) AS repeated,
       (SELECT count(*) FROM woken)::int8 AS woken
