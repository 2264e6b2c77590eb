-- Token lineage: revoking a token revokes every token minted from it (created_by is the
-- parent's id), found by walking this index.
CREATE INDEX api_tokens_created_by ON api_tokens (created_by);
