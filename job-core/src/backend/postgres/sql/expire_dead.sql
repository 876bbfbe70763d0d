-- Deletes dead letters past their retention ($1 ms) and the oldest beyond the capacity ($3),
-- at most $2 of each per call. A row requeued meanwhile is no longer dead and stays.
-- $1 retention_ms int8, $2 batch int4, $3 capacity int8, $4 fallback shard int2.
-- Returns the deleted ids, and whether each was evicted for capacity (not expired).
WITH doomed AS (
    (SELECT id FROM {s}.jobs
     WHERE state = 5 AND updated_at < now() - $1::int8 * interval '1 millisecond'
     ORDER BY updated_at LIMIT $2)
    UNION
    (SELECT id FROM {s}.jobs WHERE state = 5 ORDER BY updated_at DESC, id DESC
     OFFSET $3 LIMIT $2)
),
gone AS (
    DELETE FROM {s}.jobs j USING doomed d
    WHERE j.id = d.id AND j.state = 5
    RETURNING j.id, j.updated_at >= now() - $1::int8 * interval '1 millisecond' AS evicted
),
-- The count row: one no other transaction holds, locked here and joined below (a
-- locking subquery in the UPDATE's own WHERE would be run again, with another random
-- pick, when the row had changed since the statement began, and the update lost).
pick AS (
    SELECT shard FROM {s}.counts ORDER BY random() LIMIT 1 FOR UPDATE SKIP LOCKED
),
counted AS (
    UPDATE {s}.counts c SET dead = dead - (SELECT count(*) FROM gone)
    FROM (SELECT coalesce((SELECT shard FROM pick), $4::int2) AS shard) p
    WHERE c.shard = p.shard AND EXISTS (SELECT 1 FROM gone)
)
SELECT id, evicted FROM gone
