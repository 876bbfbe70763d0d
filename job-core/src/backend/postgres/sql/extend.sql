-- Renews the leases still held, until now() + $3 ms on the database's clock; rows locked in
-- id order (see ack.sql).
-- $1 ids uuid[], $2 tokens uuid[], $3 lease_ms int8.
-- Returns (id, lost): lost true for the ids whose lease was lost (held by nobody or another
-- token, and whose outcome was not written with this token), false for the ids renewed
-- whose cancel was requested. (A renewal that races this holder's own ack or retry,
-- as the runtime's heartbeat does while a batch of acks is in flight, finds the outcome
-- written: nothing was lost, and the row is left alone.)
WITH input AS (
    SELECT * FROM unnest($1::uuid[], $2::uuid[]) AS t(id, token)
),
-- Every row asked about is locked, held or not, so what is read below is its latest
-- version: a plain read would see the statement's snapshot, taken before an ack that
-- committed while this statement waited for the row lock.
locked AS (
    SELECT j.id, j.state, j.lease, j.done_token, j.cancel_requested
    FROM {s}.jobs j JOIN input i ON i.id = j.id
    ORDER BY j.id
    FOR UPDATE OF j
),
upd AS (
    UPDATE {s}.jobs j SET lease_expires = now() + $3::int8 * interval '1 millisecond'
    FROM locked l JOIN input i ON i.id = l.id
    WHERE j.id = l.id AND l.lease = i.token AND l.state = 2
    RETURNING j.id
)
SELECT i.id, true AS lost FROM input i
WHERE NOT EXISTS (SELECT 1 FROM upd u WHERE u.id = i.id)
  AND NOT EXISTS (SELECT 1 FROM locked l WHERE l.id = i.id AND l.done_token = i.token)
UNION ALL
SELECT l.id, false FROM locked l JOIN upd u ON u.id = l.id WHERE l.cancel_requested
