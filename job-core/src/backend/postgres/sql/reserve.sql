-- Reserves up to $2 waiting jobs that are due (queued, or scheduled/retrying whose time has
-- come: one statement makes due jobs ready and takes them), from the queues in the order
-- given, oldest first, skipping rows other workers hold; leases them until now() + $3 ms on
-- the database's clock, with a fresh random token each.
-- $1 queues text[], $2 max int4, $3 lease_ms int8, $4 fallback shard int2.
-- Returns the reserved rows (in no particular order: the caller sorts by queue, run_at, seq).
WITH picked AS (
    SELECT w.id, w.state AS was
    FROM unnest($1::text[]) WITH ORDINALITY AS q(name, ord)
    CROSS JOIN LATERAL (
        SELECT id, state FROM {s}.jobs
        WHERE queue = q.name AND state IN (0, 1, 3) AND run_at <= now()
        ORDER BY run_at, seq
        LIMIT $2
        FOR UPDATE SKIP LOCKED
    ) w
    LIMIT $2
),
taken AS (
    UPDATE {s}.jobs j SET
        state = 2,
        attempt = j.attempt + 1,
        lease = gen_random_uuid(),
        lease_expires = now() + $3::int8 * interval '1 millisecond',
        updated_at = now()
    FROM picked p
    WHERE j.id = p.id
    RETURNING j.id, j.lease, j.job, j.queue, j.payload, j.attempt, j.max_attempts, j.recoveries,
              j.enqueued_at, j.not_before, j.seq,
              (extract(epoch FROM j.run_at) * 1000)::float8 AS run_at_ms, p.was
),
-- The count row: one no other transaction holds, locked here and joined below (a
-- locking subquery in the UPDATE's own WHERE would be run again, with another random
-- pick, when the row had changed since the statement began, and the update lost).
pick AS (
    SELECT shard FROM {s}.counts ORDER BY random() LIMIT 1 FOR UPDATE SKIP LOCKED
),
counted AS (
    UPDATE {s}.counts c SET
        ready = ready - (SELECT count(*) FROM taken WHERE was = 0),
        scheduled = scheduled - (SELECT count(*) FROM taken WHERE was <> 0),
        running = running + (SELECT count(*) FROM taken)
    FROM (SELECT coalesce((SELECT shard FROM pick), $4::int2) AS shard) p
    WHERE c.shard = p.shard AND EXISTS (SELECT 1 FROM taken)
)
SELECT id, lease, job, queue, payload, attempt, max_attempts, recoveries, enqueued_at,
       not_before, seq, run_at_ms
FROM taken
