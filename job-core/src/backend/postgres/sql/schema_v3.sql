-- Schema version 3: cancel by id, and progress. State 6 is cancelled (finished, kept for the retention of
-- succeeded rows, then deleted by the sweep). `cancel_requested` marks a reserved job whose
-- cancel was asked for: extend reports it to the holder, and a retry, release or reap
-- cancels the job instead. A nullable column without a default rewrites no rows.
ALTER TABLE {s}.jobs ADD COLUMN cancel_requested boolean;
-- `progress`: what the job reported last with JobContext::progress (JSON text, at most
-- 1 KiB), kept after it finished.
ALTER TABLE {s}.jobs ADD COLUMN progress text;
CREATE INDEX jobs_cancelled ON {s}.jobs (updated_at) WHERE state = 6;
