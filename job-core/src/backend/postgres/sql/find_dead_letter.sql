-- The dead letter of one job, by id. $1 id uuid.
-- Returns the row as dead_letters.sql does, or none when the job is not dead.
SELECT id, dead_letter, job, queue, payload, attempt, enqueued_at,
       (extract(epoch FROM updated_at) * 1000)::int8, last_error
FROM {s}.jobs
WHERE id = $1::uuid AND state = 5
