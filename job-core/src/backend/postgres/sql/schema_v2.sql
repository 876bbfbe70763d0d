-- Schema version 2: which outcome `done_token` wrote, so that only a repeat of that outcome
-- counts as a repeat. (Version 1 compared the token alone: a retry, release or dead letter
-- sent with a token whose ack had been written, or an ack with a token a release had spent,
-- was answered "done" although it changed nothing, so the caller believed an outcome that
-- was never written.) Adding a nullable column without a default rewrites no rows.
--
-- done_state: the state the outcome moved the job to: 0 released (queued again), 3 retrying,
-- 4 succeeded, 5 dead. NULL on rows written by version 1, whose repeats are recognised by
-- the token alone, as before.
ALTER TABLE {s}.jobs ADD COLUMN done_state smallint;
