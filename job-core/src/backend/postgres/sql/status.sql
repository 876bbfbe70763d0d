-- One job's status by primary key.
-- $1 id uuid. Returns job, queue, state, attempt, last_error, enqueued_at (ms), updated_at (ms),
-- progress, result.
SELECT job, queue, state, attempt, last_error, enqueued_at,
       (extract(epoch FROM updated_at) * 1000)::int8, progress, result
FROM {s}.jobs
WHERE id = $1::uuid
