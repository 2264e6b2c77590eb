-- Resources of every kind share one table; `body` is the kind's spec (or definition).
CREATE SEQUENCE resource_version_seq;

CREATE TABLE resources (
    kind             text        NOT NULL,
    namespace        text        NOT NULL DEFAULT '',  -- '' for cluster-scoped kinds
    name             text        NOT NULL,
    uid              uuid        NOT NULL,
    resource_version bigint      NOT NULL,
    generation       bigint      NOT NULL DEFAULT 1,
    labels           jsonb       NOT NULL DEFAULT '{}',
    annotations      jsonb       NOT NULL DEFAULT '{}',
    body             jsonb       NOT NULL,
    status           jsonb       NOT NULL DEFAULT '{}',
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (kind, namespace, name)
);
CREATE INDEX resources_by_namespace ON resources (namespace, kind, name);
CREATE INDEX resources_by_labels ON resources USING gin (labels jsonb_path_ops);

-- Hard references between resources of one namespace (agent -> template, ...).
CREATE TABLE resource_refs (
    namespace text NOT NULL,
    kind      text NOT NULL,
    name      text NOT NULL,
    ref_kind  text NOT NULL,
    ref_name  text NOT NULL,
    PRIMARY KEY (namespace, kind, name, ref_kind, ref_name)
);
CREATE INDEX resource_refs_by_target ON resource_refs (namespace, ref_kind, ref_name);

CREATE TABLE api_tokens (
    id          text        PRIMARY KEY,
    name        text        NOT NULL,
    secret_hash bytea       NOT NULL UNIQUE,  -- sha256 of the bearer secret
    role        text        NOT NULL CHECK (role IN ('admin', 'write', 'read')),
    namespaces  text[],                        -- NULL means every namespace
    created_by  text,
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz,
    revoked_at  timestamptz
);
