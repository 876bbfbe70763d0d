-- Jobs whose lease expired (on the database's clock) go back to the front of their queue with
-- one more recovery; those recovered $1 times already (and records that name no job) die as
-- poison pills with the reason $2; those whose cancel was requested are cancelled (6). At most
-- $3 per call; rows another reaper holds are skipped.
-- $1 max_recoveries int4, $2 reason text, $3 batch int4, $4 channel text, $5 fallback shard int2.
-- Returns per job: id, state (0 recovered, 5 dead, 6 cancelled), and for the dead the
-- dead-letter fields.
WITH expired AS (
    SELECT id FROM {s}.jobs
    WHERE state = 2 AND lease_expires < now()
    ORDER BY lease_expires
    LIMIT $3
    FOR UPDATE SKIP LOCKED
),
upd AS (
    UPDATE {s}.jobs j SET
        recoveries = j.recoveries + 1,
        state = CASE WHEN j.cancel_requested THEN 6
                     WHEN j.recoveries + 1 < $1::int4 AND j.job IS NOT NULL
                          AND j.payload IS NOT NULL THEN 0 ELSE 5 END,
        run_at = CASE WHEN j.cancel_requested THEN j.run_at
                      WHEN j.recoveries + 1 < $1::int4 AND j.job IS NOT NULL
                           AND j.payload IS NOT NULL THEN '-infinity'::timestamptz
                      ELSE j.run_at END,
        last_error = CASE WHEN j.cancel_requested THEN j.last_error
                          WHEN j.recoveries + 1 < $1::int4 AND j.job IS NOT NULL
                               AND j.payload IS NOT NULL THEN j.last_error
                          ELSE $2::text END,
        lease = NULL, lease_expires = NULL, updated_at = now()
    FROM expired e
    WHERE j.id = e.id
    RETURNING j.id, j.state, j.job, j.queue, j.payload, j.attempt, j.enqueued_at, j.last_error,
              (extract(epoch FROM j.updated_at) * 1000)::int8 AS died_ms
),
-- The count row: one no other transaction holds, locked here and joined below (a
-- locking subquery in the UPDATE's own WHERE would be run again, with another random
-- pick, when the row had changed since the statement began, and the update lost).
pick AS (
    SELECT shard FROM {s}.counts ORDER BY random() LIMIT 1 FOR UPDATE SKIP LOCKED
),
counted AS (
    UPDATE {s}.counts c SET
        running = running - (SELECT count(*) FROM upd),
        ready = ready + (SELECT count(*) FROM upd WHERE state = 0),
        dead = dead + (SELECT count(*) FROM upd WHERE state = 5)
    FROM (SELECT coalesce((SELECT shard FROM pick), $5::int2) AS shard) p
    WHERE c.shard = p.shard AND EXISTS (SELECT 1 FROM upd)
),
woken AS (
    SELECT pg_notify($4::text, queue) FROM upd WHERE state = 0 GROUP BY queue
)
SELECT u.id, u.state, u.job, u.queue, u.payload, u.attempt, u.enqueued_at, u.last_error,
       u.died_ms, (SELECT count(*) FROM woken)::int8 AS woken
FROM upd u
