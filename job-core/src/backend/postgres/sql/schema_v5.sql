-- Schema version 5: announced job ends, for waiters in any process. `watched`: a waiter
-- asked to hear of this job's end (watch.sql sets it on live jobs only). When a watched
-- job ends (succeeded 4, dead 5, cancelled 6) or its row is deleted, a trigger sends
-- `=<id>` on the channel the work wake-ups use, `job_core.<schema>` (the schema name needs
-- no quoting: it is checked at build), and clears the flag. A row nobody watches costs the
-- trigger's WHEN test and nothing else; a column with a constant default rewrites no rows.
ALTER TABLE {s}.jobs ADD COLUMN watched boolean NOT NULL DEFAULT false;

CREATE FUNCTION {s}.announce_end() RETURNS trigger LANGUAGE plpgsql AS $body$
BEGIN
    PERFORM pg_notify('job_core.' || TG_TABLE_SCHEMA, '=' || OLD.id::text);
    IF TG_OP = 'DELETE' THEN
        RETURN OLD;
    END IF;
    NEW.watched := false;
    RETURN NEW;
END
$body$;

CREATE TRIGGER announce_end BEFORE UPDATE ON {s}.jobs
    FOR EACH ROW WHEN (OLD.watched AND NEW.state IN (4, 5, 6))
    EXECUTE FUNCTION {s}.announce_end();

CREATE TRIGGER announce_gone BEFORE DELETE ON {s}.jobs
    FOR EACH ROW WHEN (OLD.watched)
    EXECUTE FUNCTION {s}.announce_end();
