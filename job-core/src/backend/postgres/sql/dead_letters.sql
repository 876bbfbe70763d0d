-- Dead letters, oldest first, at most $1.
-- Returns id, dead_letter (the record, NULL for a poison pill the reaper killed), job, queue,
-- payload, attempt, enqueued_at (ms), died (ms), last_error.
SELECT id, dead_letter, job, queue, payload, attempt, enqueued_at,
       (extract(epoch FROM updated_at) * 1000)::int8, last_error
FROM {s}.jobs
WHERE state = 5
ORDER BY updated_at, id
LIMIT $1
