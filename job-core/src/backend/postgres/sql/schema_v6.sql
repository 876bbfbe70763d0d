-- Schema version 6: uniqueness keys (see unique_take.sql). A key names the job holding it
-- until `expires_at`; `until_finished`: the holder's end (succeeded 4, dead 5, cancelled 6,
-- or its row swept) frees the key earlier. Expired keys are deleted by the reaper's sweep
-- (unique_sweep.sql), oldest first.
CREATE TABLE {s}.unique_keys (
    key text PRIMARY KEY,
    job_id uuid NOT NULL,
    expires_at timestamptz NOT NULL,
    until_finished boolean NOT NULL
);
CREATE INDEX unique_keys_expiry ON {s}.unique_keys (expires_at);
