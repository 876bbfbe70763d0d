-- Takes a uniqueness key for job $2, unless another job holds it: inserted when absent;
-- taken over when it expired, when it already names $2 (this enqueue repeated after a lost
-- reply), or when its holder took it until finished and has finished. The conflicting row
-- is locked either way (ON CONFLICT DO UPDATE locks it even when the WHERE is false), so
-- racing enqueues of one key queue up here and one of them wins; the caller stores the job
-- in the same transaction, or rolls back (the store was full) and frees the key with it.
-- $1 key text, $2 job uuid, $3 window_ms int8, $4 until_finished bool.
-- Returns one row when the key is now $2's; none when another job holds it.
INSERT INTO {s}.unique_keys AS k (key, job_id, expires_at, until_finished)
VALUES ($1::text, $2::uuid, now() + $3::int8 * interval '1 millisecond', $4::bool)
ON CONFLICT (key) DO UPDATE SET
    job_id = EXCLUDED.job_id,
    expires_at = EXCLUDED.expires_at,
    until_finished = EXCLUDED.until_finished
WHERE k.expires_at <= now()
   OR k.job_id = EXCLUDED.job_id
   OR (k.until_finished AND NOT EXISTS (
           SELECT 1 FROM {s}.jobs j WHERE j.id = k.job_id AND j.state NOT IN (4, 5, 6)))
RETURNING job_id
