-- One row per (schedule, fire time): the primary key makes each fire claimable exactly once,
-- whatever delivers it (the local loop, a Cloud Tasks callback, a retry, `run`).
CREATE TABLE schedule_fires (
    namespace        text        NOT NULL,
    schedule         text        NOT NULL,
    fire_at          timestamptz NOT NULL,
    schedule_version bigint      NOT NULL,
    reason           text        NOT NULL,   -- cron | once | catch-up | run
    session_id       text,
    turn_id          uuid,
    outcome          text        NOT NULL,   -- queued | failed
    error            text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (namespace, schedule, fire_at)
);
CREATE INDEX schedule_fires_recent ON schedule_fires (namespace, schedule, fire_at DESC);
