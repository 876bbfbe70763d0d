-- The attempt of a job whose cancel was requested has ended (or never started): the job is
-- cancelled (6). Fenced by the lease token.
-- $1 id uuid, $2 token uuid, $3 fallback shard int2.
-- Returns changed (1 or 0), repeated (this token's cancel was written already).
WITH upd AS (
    UPDATE {s}.jobs SET
        state = 6, lease = NULL, lease_expires = NULL, done_token = $2::uuid, done_state = 6,
        updated_at = now()
    WHERE id = $1::uuid AND lease = $2::uuid AND state = 2
    RETURNING id
),
-- The count row: one no other transaction holds, locked here and joined below (a
-- locking subquery in the UPDATE's own WHERE would be run again, with another random
-- pick, when the row had changed since the statement began, and the update lost).
pick AS (
    SELECT shard FROM {s}.counts ORDER BY random() LIMIT 1 FOR UPDATE SKIP LOCKED
),
counted AS (
    UPDATE {s}.counts c SET running = running - 1
    FROM (SELECT coalesce((SELECT shard FROM pick), $3::int2) AS shard) p
    WHERE c.shard = p.shard AND EXISTS (SELECT 1 FROM upd)
)
SELECT (SELECT count(*) FROM upd)::int8 AS changed,
       EXISTS (SELECT 1 FROM {s}.jobs WHERE id = $1::uuid AND done_token = $2::uuid
                                          AND done_state = 6) AS repeated
