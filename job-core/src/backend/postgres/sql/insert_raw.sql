-- Stores raw text as the payload of a ready record that names no job (a corrupted or foreign
-- record, for tests and tools): `reserve` hands it out as malformed. For a fresh id.
-- $1 id uuid, $2 queue text, $3 raw text, $4 channel text, $5 fallback shard int2.
WITH ins AS (
    INSERT INTO {s}.jobs (id, job, queue, payload, state, enqueued_at, run_at, seq)
    VALUES ($1::uuid, NULL, $2::text, $3::text, 0,
            (extract(epoch FROM now()) * 1000)::int8, now(), nextval('{s}.seq'))
    RETURNING queue
),
-- The count row: one no other transaction holds, locked here and joined below (a
-- locking subquery in the UPDATE's own WHERE would be run again, with another random
-- pick, when the row had changed since the statement began, and the update lost).
pick AS (
    SELECT shard FROM {s}.counts ORDER BY random() LIMIT 1 FOR UPDATE SKIP LOCKED
),
counted AS (
    UPDATE {s}.counts c SET ready = ready + 1
    FROM (SELECT coalesce((SELECT shard FROM pick), $5::int2) AS shard) p
    WHERE c.shard = p.shard AND EXISTS (SELECT 1 FROM ins)
),
woken AS (
    SELECT pg_notify($4::text, queue) FROM ins
)
SELECT (SELECT count(*) FROM woken)::int8
