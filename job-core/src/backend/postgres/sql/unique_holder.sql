-- The job holding a uniqueness key, after unique_take.sql found it held (and locked it).
-- $1 key text.
SELECT job_id FROM {s}.unique_keys WHERE key = $1::text
