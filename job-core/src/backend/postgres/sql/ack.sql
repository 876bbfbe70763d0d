-- The attempts succeeded: each job held under its token is finished (kept as succeeded for
-- the retention, or deleted now when $4), locked in id order so that concurrent batches never
-- deadlock. An ack repeated with the token whose outcome was written last changes nothing and
-- is not reported; an ack with a token that a retry, release or dead letter spent is
-- reported (done_state: only the outcome written last is a repeat).
-- $1 ids uuid[], $2 tokens uuid[], $3 fallback shard int2, $4 delete_now bool, $5 results
-- text[] (JSON, one per id; empty for acks with no result: unnest pads it with NULLs).
-- Returns the ids whose lease was not held.
WITH input AS (
    SELECT * FROM unnest($1::uuid[], $2::uuid[], $5::text[]) AS t(id, token, result)
),
held AS (
    SELECT j.id, i.token, i.result
    FROM {s}.jobs j JOIN input i ON i.id = j.id
    WHERE j.lease = i.token AND j.state = 2
    ORDER BY j.id
    FOR UPDATE OF j
),
kept AS (
    UPDATE {s}.jobs j SET
        state = 4, payload = NULL, lease = NULL, lease_expires = NULL,
        done_token = h.token, done_state = 4, updated_at = now(), result = h.result
    FROM held h
    WHERE j.id = h.id AND NOT $4::bool
    RETURNING j.id
),
gone AS (
    DELETE FROM {s}.jobs j USING held h
    WHERE j.id = h.id AND $4::bool
    RETURNING j.id
),
done AS (
    SELECT id FROM kept UNION ALL SELECT id FROM gone
),
-- The count row: one no other transaction holds, locked here and joined below (a
-- locking subquery in the UPDATE's own WHERE would be run again, with another random
-- pick, when the row had changed since the statement began, and the update lost).
pick AS (
    SELECT shard FROM {s}.counts ORDER BY random() LIMIT 1 FOR UPDATE SKIP LOCKED
),
counted AS (
    UPDATE {s}.counts c SET running = running - (SELECT count(*) FROM done)
    FROM (SELECT coalesce((SELECT shard FROM pick), $3::int2) AS shard) p
    WHERE c.shard = p.shard AND EXISTS (SELECT 1 FROM done)
)
SELECT i.id
FROM input i
WHERE NOT EXISTS (SELECT 1 FROM done d WHERE d.id = i.id)
  AND NOT EXISTS (SELECT 1 FROM {s}.jobs j
                  WHERE j.id = i.id AND j.done_token = i.token
                    AND coalesce(j.done_state, 4) = 4)
