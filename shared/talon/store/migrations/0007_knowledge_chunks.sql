-- Knowledge documents split into chunks and indexed for full-text search. Rows are rebuilt
-- whenever a document's version changes; retrieval never crosses namespaces.
CREATE TABLE knowledge_chunks (
    namespace        text    NOT NULL,
    document         text    NOT NULL,
    resource_version bigint  NOT NULL,
    idx              integer NOT NULL,
    heading          text    NOT NULL,
    content          text    NOT NULL,
    tsv              tsvector GENERATED ALWAYS AS (
        setweight(to_tsvector('english', heading), 'A') || to_tsvector('english', content)
    ) STORED,
    PRIMARY KEY (namespace, document, idx)
);
CREATE INDEX knowledge_chunks_search ON knowledge_chunks USING gin (tsv);
