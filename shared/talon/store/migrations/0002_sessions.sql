-- Sessions: durable threads around an agent, with their messages, turns, step journal and
-- event log. Everything a worker needs to resume a turn after a crash lives here.

CREATE TABLE sessions (
    uid            uuid        PRIMARY KEY,
    namespace      text        NOT NULL,
    id             text        NOT NULL,           -- the name in URLs, e.g. enterprise-renewals
    agent          text        NOT NULL,
    metadata       jsonb       NOT NULL DEFAULT '{}',
    status         text        NOT NULL DEFAULT 'active',
    last_event_id  bigint      NOT NULL DEFAULT 0, -- per-session event sequence
    last_message   bigint      NOT NULL DEFAULT 0, -- per-session message sequence
    last_turn      bigint      NOT NULL DEFAULT 0, -- per-session turn sequence
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    UNIQUE (namespace, id)
);
CREATE INDEX sessions_by_agent ON sessions (namespace, agent, id);

CREATE TABLE messages (
    session_uid  uuid        NOT NULL REFERENCES sessions (uid) ON DELETE CASCADE,
    seq          bigint      NOT NULL,
    role         text        NOT NULL CHECK (role IN ('user', 'assistant', 'tool', 'system')),
    content      text        NOT NULL DEFAULT '',
    tool_calls   jsonb,                 -- assistant: [{id, name, arguments}]
    tool_call_id text,                  -- tool: the call this answers
    turn_id      uuid,
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (session_uid, seq)
);

CREATE TABLE turns (
    id               uuid        PRIMARY KEY,
    session_uid      uuid        NOT NULL REFERENCES sessions (uid) ON DELETE CASCADE,
    seq              bigint      NOT NULL,
    state            text        NOT NULL DEFAULT 'queued'
                     CHECK (state IN ('queued', 'running', 'completed', 'failed', 'cancelled')),
    source           text        NOT NULL DEFAULT 'api',
    idempotency_key  text,
    request_hash     bytea,                      -- detects a key reused with another body
    input_seq        bigint      NOT NULL,       -- the user message that started it
    fencing_token    bigint      NOT NULL DEFAULT 0,
    lease_owner      text,
    lease_expires_at timestamptz,
    attempts         integer     NOT NULL DEFAULT 0,
    cancel_requested boolean     NOT NULL DEFAULT false,
    provider         text,
    error            jsonb,
    deadline_at      timestamptz,
    created_at       timestamptz NOT NULL DEFAULT now(),
    started_at       timestamptz,
    finished_at      timestamptz,
    UNIQUE (session_uid, seq),
    UNIQUE (session_uid, idempotency_key)
);
-- The open turns of a session, oldest first: the head is the one that may run.
CREATE INDEX turns_open ON turns (session_uid, seq) WHERE state IN ('queued', 'running');

-- The step journal: a step is written when it completes (tool calls also when they start),
-- so a redelivered turn resumes after the last completed step.
CREATE TABLE turn_steps (
    turn_id       uuid        NOT NULL REFERENCES turns (id) ON DELETE CASCADE,
    idx           integer     NOT NULL,
    name          text        NOT NULL,
    kind          text        NOT NULL,   -- knowledge | model | tool | write
    state         text        NOT NULL CHECK (state IN ('started', 'completed', 'failed')),
    output        jsonb       NOT NULL DEFAULT '{}',
    fencing_token bigint      NOT NULL,
    started_at    timestamptz NOT NULL DEFAULT now(),
    completed_at  timestamptz,
    PRIMARY KEY (turn_id, idx)
);

CREATE TABLE session_events (
    session_uid uuid        NOT NULL REFERENCES sessions (uid) ON DELETE CASCADE,
    id          bigint      NOT NULL,
    turn_id     uuid,
    type        text        NOT NULL,
    data        jsonb       NOT NULL DEFAULT '{}',
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (session_uid, id)
);

-- Transactional outbox. With the postgres broker this table is the queue itself (consumers
-- claim rows with FOR UPDATE SKIP LOCKED); with Pub/Sub a relay publishes rows and marks them.
CREATE TABLE outbox (
    id            bigserial   PRIMARY KEY,
    topic         text        NOT NULL,
    key           text        NOT NULL DEFAULT '',   -- ordering/dedup hint, e.g. a turn id
    payload       jsonb       NOT NULL,
    available_at  timestamptz NOT NULL DEFAULT now(),
    attempts      integer     NOT NULL DEFAULT 0,
    claimed_until timestamptz,
    published_at  timestamptz,
    created_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX outbox_pending ON outbox (topic, available_at) WHERE published_at IS NULL;
