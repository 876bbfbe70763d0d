-- Schema version 4: job results. `result`: the JSON the job's successful attempt produced
-- (at most 64 KiB), written by the ack that finishes the job and kept with the row for the
-- retention of succeeded rows. A nullable column without a default rewrites no rows.
ALTER TABLE {s}.jobs ADD COLUMN result text;
