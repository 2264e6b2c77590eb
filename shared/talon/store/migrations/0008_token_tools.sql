-- Tokens brokered for talon-ops: limited to a set of tools (NULL: a general token).
ALTER TABLE api_tokens ADD COLUMN tools text[];
