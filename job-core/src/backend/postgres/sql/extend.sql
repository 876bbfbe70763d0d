-- Renews the leases still held, until now() + $3 ms on the database's clock; rows locked in
-- id order (see ack.sql).
-- $1 ids uuid[], $2 tokens uuid[], $3 lease_ms int8.
-- Returns the ids whose lease was not held.
WITH input AS (
    SELECT * FROM unnest($1::uuid[], $2::uuid[]) AS t(id, token)
),
held AS (
    SELECT j.id
    FROM {s}.jobs j JOIN input i ON i.id = j.id
    WHERE j.lease = i.token AND j.state = 2
    ORDER BY j.id
    FOR UPDATE OF j
),
upd AS (
    UPDATE {s}.jobs j SET lease_expires = now() + $3::int8 * interval '1 millisecond'
    FROM held h
    WHERE j.id = h.id
    RETURNING j.id
)
SELECT i.id FROM input i WHERE NOT EXISTS (SELECT 1 FROM upd u WHERE u.id = i.id)
