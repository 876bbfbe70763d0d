-- Stores new jobs in order while capacity allows. An id already stored changes nothing and
-- counts as stored. Wakes listeners on commit: `queue` for jobs ready now, `queue <ms>` for
-- the earliest delayed one.
-- $1 ids uuid[], $2 jobs text[], $3 queues text[], $4 payloads text[], $5 max_attempts int4[],
-- $6 attempts int4[], $7 recoveries int4[], $8 enqueued_at int8[], $9 not_before int8[]
-- (NULL elements: none), $10 capacity int8, $11 channel text, $12 fallback shard int2.
-- Returns one row: stored (how many of the first jobs are stored), woken.
WITH input AS (
    SELECT *
    FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::int4[], $6::int4[],
                $7::int4[], $8::int8[], $9::int8[])
        WITH ORDINALITY AS t(id, job, queue, payload, max_attempts, attempt, recoveries,
                             enqueued_at, not_before, ord)
),
room AS (
    SELECT $10::int8 - coalesce(sum(ready + scheduled + running), 0) AS free FROM {s}.counts
),
ranked AS (
    SELECT i.*, e.stored,
           sum(CASE WHEN e.stored THEN 0 ELSE 1 END) OVER (ORDER BY i.ord) AS fresh_upto
    FROM input i
    CROSS JOIN LATERAL (SELECT EXISTS (SELECT 1 FROM {s}.jobs j WHERE j.id = i.id) AS stored) e
),
cut AS (
    SELECT coalesce(min(r.ord), 9223372036854775807) AS first_out
    FROM ranked r, room
    WHERE NOT r.stored AND r.fresh_upto > room.free
),
ins AS (
    INSERT INTO {s}.jobs (id, job, queue, payload, state, attempt, max_attempts, recoveries,
                          enqueued_at, not_before, run_at, seq)
    SELECT r.id, r.job, r.queue, r.payload,
           CASE WHEN r.not_before IS NOT NULL AND to_timestamp(r.not_before / 1000.0) > now()
                THEN 1 ELSE 0 END,
           r.attempt, r.max_attempts, r.recoveries, r.enqueued_at, r.not_before,
           coalesce(to_timestamp(r.not_before / 1000.0), now()), nextval('{s}.seq')
    FROM ranked r, cut
    WHERE NOT r.stored AND r.ord < cut.first_out
    ORDER BY r.ord
    ON CONFLICT (id) DO NOTHING
    RETURNING queue, state, not_before
),
-- The count row: one no other transaction holds, locked here and joined below (a
-- locking subquery in the UPDATE's own WHERE would be run again, with another random
-- pick, when the row had changed since the statement began, and the update lost).
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
    SELECT pg_notify($11::text, w.queue || coalesce(' ' || w.due::text, ''))
    FROM (SELECT queue, NULL::int8 AS due FROM ins WHERE state = 0 GROUP BY queue
          UNION ALL
          SELECT queue, min(not_before) FROM ins WHERE state = 1 GROUP BY queue) w
)
SELECT least((SELECT first_out FROM cut) - 1, (SELECT count(*) FROM input))::int8 AS stored,
       (SELECT count(*) FROM woken)::int8 AS woken
