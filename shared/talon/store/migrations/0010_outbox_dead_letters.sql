-- The postgres broker's dead letters: a row delivered maxDeliveryAttempts times without being
-- settled is marked dead (kept for inspection, never claimed again) once the worker has
-- failed the turn it named.
ALTER TABLE outbox ADD COLUMN dead_at timestamptz;
DROP INDEX outbox_pending;
CREATE INDEX outbox_pending ON outbox (topic, available_at)
    WHERE published_at IS NULL AND dead_at IS NULL;
