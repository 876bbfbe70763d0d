-- Deletes up to $2 succeeded rows, and up to $2 cancelled ones, whose retention ($1 ms) has
-- passed, oldest first. A succeeded or cancelled row never changes again, so no lock is
-- needed beyond the delete's own.
-- $1 retention_ms int8, $2 batch int4.
DELETE FROM {s}.jobs
WHERE id IN (
    (SELECT id FROM {s}.jobs
     WHERE state = 4 AND updated_at < now() - $1::int8 * interval '1 millisecond'
     ORDER BY updated_at
     LIMIT $2)
    UNION ALL
    (SELECT id FROM {s}.jobs
     WHERE state = 6 AND updated_at < now() - $1::int8 * interval '1 millisecond'
     ORDER BY updated_at
     LIMIT $2)
)
