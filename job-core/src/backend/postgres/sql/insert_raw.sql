-- Stores raw text as the payload of a ready record that names no job (a corrupted or foreign
-- record, for tests and tools): `reserve` hands it out as malformed. For a fresh id.
-- $1 id uuid, $2 queue text, $3 raw text, $4 channel text, $5 fallback shard int2.
WITH ins AS (
    INSERT INTO {s}.jobs (id, job, queue, payload, state, enqueued_at, run_at, seq)
    VALUES ($1::uuid, NULL, $2::text, $3::text, 0,
            (extract(epoch FROM now()) * 1000)::int8, now(), nextval('{s}.seq'))
    RETURNING queue
),
counted AS (
    UPDATE {s}.counts SET ready = ready + 1
    WHERE shard = coalesce((SELECT shard FROM {s}.counts ORDER BY random() LIMIT 1
                            FOR UPDATE SKIP LOCKED), $5::int2)
      AND EXISTS (SELECT 1 FROM ins)
),
woken AS (
    SELECT pg_notify($4::text, queue) FROM ins
)
SELECT (SELECT count(*) FROM woken)::int8
