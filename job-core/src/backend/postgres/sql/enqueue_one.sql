-- Stores one new job while capacity allows; what enqueue.sql does for a batch, for the
-- common case of one job with plain parameters. (With arrays, Postgres plans the batch
-- statement again on every call, since a plan for the actual array lengths always looks
-- cheaper than the generic one: half a millisecond of planning per single enqueue. With
-- plain parameters the generic plan is kept after the first few calls.)
-- An id already stored changes nothing and counts as stored. Wakes listeners on commit:
-- `queue` for a job ready now, `queue <ms>` for a delayed one.
-- $1 id uuid, $2 job text, $3 queue text, $4 payload text, $5 max_attempts int4,
-- $6 attempt int4, $7 recoveries int4, $8 enqueued_at int8, $9 not_before int8 (NULL: none),
-- $10 capacity int8, $11 channel text, $12 fallback shard int2.
-- Returns one row: inserted (0 or 1), stored_before (the id was stored when the statement
-- began), free (room left before it).
WITH room AS (
    SELECT $10::int8 - coalesce(sum(ready + scheduled + running), 0) AS free FROM {s}.counts
),
ins AS (
    INSERT INTO {s}.jobs (id, job, queue, payload, state, attempt, max_attempts, recoveries,
                          enqueued_at, not_before, run_at, seq)
    SELECT $1::uuid, $2::text, $3::text, $4::text,
           CASE WHEN $9::int8 IS NOT NULL AND to_timestamp($9::int8 / 1000.0) > now()
                THEN 1 ELSE 0 END,
           $6::int4, $5::int4, $7::int4, $8::int8, $9::int8,
           coalesce(to_timestamp($9::int8 / 1000.0), now()), nextval('{s}.seq')
    WHERE (SELECT free FROM room) > 0
    ON CONFLICT (id) DO NOTHING
    RETURNING queue, state, not_before
),
-- The count row: as in enqueue.sql, locked in a CTE and joined.
pick AS (
    SELECT shard FROM {s}.counts ORDER BY random() LIMIT 1 FOR UPDATE SKIP LOCKED
),
counted AS (
    UPDATE {s}.counts c SET
        ready = ready + (SELECT count(*) FROM ins WHERE state = 0),
        scheduled = scheduled + (SELECT count(*) FROM ins WHERE state = 1)
    FROM (SELECT coalesce((SELECT shard FROM pick), $12::int2) AS shard) p
    WHERE c.shard = p.shard AND EXISTS (SELECT 1 FROM ins)
),
woken AS (
    SELECT pg_notify($11::text,
                     queue || CASE WHEN state = 1 THEN ' ' || not_before::text ELSE '' END)
    FROM ins
)
SELECT (SELECT count(*) FROM ins)::int8 AS inserted,
       EXISTS (SELECT 1 FROM {s}.jobs WHERE id = $1::uuid) AS stored_before,
       (SELECT free FROM room)::int8 AS free,
       (SELECT count(*) FROM woken)::int8 AS woken
