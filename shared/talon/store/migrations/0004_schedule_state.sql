-- When each schedule fires next, kept in step with its manifest (NULL: disabled or finished).
-- The local scheduler loop claims due rows with FOR UPDATE SKIP LOCKED.
CREATE TABLE schedule_state (
    namespace    text        NOT NULL,
    name         text        NOT NULL,
    version      bigint      NOT NULL,
    next_fire_at timestamptz,
    PRIMARY KEY (namespace, name)
);
CREATE INDEX schedule_state_due ON schedule_state (next_fire_at) WHERE next_fire_at IS NOT NULL;
