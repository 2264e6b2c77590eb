-- Model token usage, one row per journaled model step. No foreign keys on purpose: usage
-- outlives the session and turn it was spent on (deleting a thread does not erase what it
-- cost); it goes with its namespace.
CREATE TABLE model_usage (
    turn_id           uuid        NOT NULL,
    idx               integer     NOT NULL,   -- the model step's index in the turn's journal
    namespace         text        NOT NULL,
    agent             text        NOT NULL,
    session_id        text        NOT NULL,
    session_uid       uuid        NOT NULL,
    turn_seq          bigint      NOT NULL,
    profile           text        NOT NULL,
    provider          text        NOT NULL,
    model             text        NOT NULL,
    prompt_tokens     bigint      NOT NULL DEFAULT 0,
    completion_tokens bigint      NOT NULL DEFAULT 0,
    recorded_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (turn_id, idx)
);
CREATE INDEX model_usage_by_namespace ON model_usage (namespace, recorded_at);
CREATE INDEX model_usage_by_agent ON model_usage (namespace, agent, recorded_at);
CREATE INDEX model_usage_by_session ON model_usage (session_uid, recorded_at);
