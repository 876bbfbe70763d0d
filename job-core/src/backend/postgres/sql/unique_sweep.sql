-- Deletes up to $1 uniqueness keys whose window has passed, oldest first. A key being taken
-- over at the same time is skipped (it is no longer expired once taken).
-- $1 batch int4.
DELETE FROM {s}.unique_keys
WHERE key IN (SELECT key FROM {s}.unique_keys
              WHERE expires_at < now()
              ORDER BY expires_at
              LIMIT $1
              FOR UPDATE SKIP LOCKED)
