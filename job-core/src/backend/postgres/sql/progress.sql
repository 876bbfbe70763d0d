-- Keeps the progress each job reported, where the token is its lease (a job no longer held
-- is left alone); rows locked in id order (see ack.sql).
-- $1 ids uuid[], $2 tokens uuid[], $3 progress text[] (JSON).
WITH input AS (
    SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::text[]) AS t(id, token, progress)
),
held AS (
    SELECT j.id, i.progress
    FROM {s}.jobs j JOIN input i ON i.id = j.id
    WHERE j.lease = i.token AND j.state = 2
    ORDER BY j.id
    FOR UPDATE OF j
)
UPDATE {s}.jobs j SET progress = h.progress
FROM held h
WHERE j.id = h.id
