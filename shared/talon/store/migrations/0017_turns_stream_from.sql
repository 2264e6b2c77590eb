-- The last event id before a turn's first event, written when the turn is queued: a request
-- retried with the turn's Idempotency-Key answers with it at once, where finding the turn's
-- first event read the session's events from its first one (a long session has millions).
-- Turns queued before this migration keep NULL and are looked up the old way.
ALTER TABLE turns ADD COLUMN stream_from bigint;
