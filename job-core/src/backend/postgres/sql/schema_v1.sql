-- Schema version 1: the job table, its order sequence and the sharded counts.
-- `{s}` is the quoted schema name. Run by `connect()` inside a transaction that holds an
-- advisory lock, so processes that start at once apply it once.
--
-- jobs.state: 0 queued, 1 scheduled (delayed), 2 running (leased), 3 retrying (waiting for
-- its next attempt), 4 succeeded, 5 dead.
CREATE TABLE {s}.jobs (
    id            uuid PRIMARY KEY,
    job           text,                 -- NULL: a stored record that names no job (malformed)
    queue         text NOT NULL,
    payload       text,                 -- the JSON text the client wrote; NULL once succeeded
    state         smallint NOT NULL,
    attempt       integer NOT NULL DEFAULT 0,
    max_attempts  integer,              -- NULL: malformed
    recoveries    integer NOT NULL DEFAULT 0,
    enqueued_at   bigint NOT NULL,      -- ms since the Unix epoch, as the client set it
    not_before    bigint,               -- ms since the Unix epoch, as the client set it
    run_at        timestamptz NOT NULL, -- order among waiting jobs: due time, '-infinity' for the front
    seq           bigint NOT NULL,      -- order among jobs with the same run_at
    lease         uuid,                 -- the lease token, while running
    lease_expires timestamptz,          -- on the database's clock
    done_token    uuid,                 -- the token whose outcome was written last
    last_error    text,
    dead_letter   text,                 -- the dead-letter record (JSON), once dead
    updated_at    timestamptz NOT NULL DEFAULT now()
) WITH (
    -- A queue table churns: vacuum it as soon as a few thousand rows are dead.
    autovacuum_vacuum_scale_factor = 0.0,
    autovacuum_vacuum_threshold = 5000,
    autovacuum_vacuum_insert_scale_factor = 0.0,
    autovacuum_vacuum_insert_threshold = 20000,
    autovacuum_vacuum_cost_delay = 0,
    autovacuum_analyze_scale_factor = 0.02
);

-- Waiting jobs (queued, scheduled, retrying) by queue in the order they are reserved.
CREATE INDEX jobs_waiting ON {s}.jobs (queue, run_at, seq) WHERE state IN (0, 1, 3);
-- Leases, for the reaper.
CREATE INDEX jobs_leased ON {s}.jobs (lease_expires) WHERE state = 2;
-- Finished rows, for retention.
CREATE INDEX jobs_succeeded ON {s}.jobs (updated_at) WHERE state = 4;
CREATE INDEX jobs_dead ON {s}.jobs (updated_at) WHERE state = 5;

CREATE SEQUENCE {s}.seq;

-- Jobs per state, kept by every statement that moves a job, in the same statement, on one
-- of 32 rows picked with SKIP LOCKED (so concurrent statements, and transactions that
-- enqueue and stay open, do not queue behind one hot row). Sums are exact: every change is
-- transactional. `stats()` and the capacity check read 32 rows, never the job table.
CREATE TABLE {s}.counts (
    shard     smallint PRIMARY KEY,
    ready     bigint NOT NULL DEFAULT 0,
    scheduled bigint NOT NULL DEFAULT 0,   -- scheduled and retrying
    running   bigint NOT NULL DEFAULT 0,
    dead      bigint NOT NULL DEFAULT 0
) WITH (fillfactor = 50);
INSERT INTO {s}.counts (shard) SELECT generate_series(0, 31);
