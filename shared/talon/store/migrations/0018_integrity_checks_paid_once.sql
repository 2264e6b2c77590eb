-- Issue 19: integrity checks a turn paid for on every statement, paid once instead (7-10% of
-- PostgreSQL's CPU per turn in alternated pairs, bench/turns.py; README, fourteenth round).
--
-- What it costs on a database in service: ACCESS EXCLUSIVE on turns, turn_steps and
-- messages until it commits (reads wait too), taken at once below and given up after 5 s
-- (the next start tries again) rather than queueing every turn behind a long transaction.
-- No table is rewritten (tests/test_integrity.py); turns is read twice to build its two
-- partial indexes again (their predicates name the state). Processes of an older release
-- still running then fail a cached statement that returns one of the retyped columns once
-- per connection ("cached plan must not change result type"); since this release a
-- one-round-trip transaction prepares it again and retries (store/statements.py).
SET LOCAL lock_timeout = '5s';
LOCK TABLE turns, turn_steps, messages IN ACCESS EXCLUSIVE MODE;

-- 1. turn_steps' foreign key to turns ran a trigger for every step inserted: a lookup of the
--    turn row and a KEY SHARE lock on it. Every step is written by a transaction that has
--    already locked its turn row and its session's (the claim, or the lease's renewal:
--    store/turn_steps.py), so its turn exists at commit and a session's deletion waits for
--    it. A turn's deletion still takes its steps: the triggers below fire per statement,
--    on deletes and truncations only, never on the inserts.
ALTER TABLE turn_steps DROP CONSTRAINT turn_steps_turn_id_fkey;
CREATE FUNCTION talon_delete_turn_steps() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM turn_steps WHERE turn_id IN (SELECT id FROM gone);
    RETURN NULL;
END
$$;
CREATE TRIGGER turns_delete_their_steps AFTER DELETE ON turns REFERENCING OLD TABLE AS gone
    FOR EACH STATEMENT EXECUTE FUNCTION talon_delete_turn_steps();
CREATE FUNCTION talon_truncate_turn_steps() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    TRUNCATE turn_steps;
    RETURN NULL;
END
$$;
CREATE TRIGGER turns_truncate_their_steps AFTER TRUNCATE ON turns
    FOR EACH STATEMENT EXECUTE FUNCTION talon_truncate_turn_steps();

-- 2. A CHECK constraint is read back from its stored text and planned for every statement
--    that inserts into or updates its table, whatever columns it sets; a domain's constraint
--    is prepared once per connection and checked only where a value is assigned. The same
--    value lists, as domains. Each column changes type while its domain has no constraint
--    yet (no rewrite), and the constraints are added NOT VALID: the CHECK constraints
--    dropped in this transaction held for every row, so reading the tables again to prove
--    it would only cost time under the locks. New values are checked all the same.
CREATE DOMAIN talon_message_role AS text;
CREATE DOMAIN talon_turn_state AS text;
CREATE DOMAIN talon_step_state AS text;
ALTER TABLE messages DROP CONSTRAINT messages_role_check;
ALTER TABLE turns DROP CONSTRAINT turns_state_check;
ALTER TABLE turn_steps DROP CONSTRAINT turn_steps_state_check;
ALTER TABLE messages ALTER COLUMN role TYPE talon_message_role;
ALTER TABLE turns ALTER COLUMN state TYPE talon_turn_state;
ALTER TABLE turn_steps ALTER COLUMN state TYPE talon_step_state;
ALTER DOMAIN talon_message_role ADD CONSTRAINT talon_message_role_check
    CHECK (VALUE IN ('user', 'assistant', 'tool', 'system')) NOT VALID;
ALTER DOMAIN talon_turn_state ADD CONSTRAINT talon_turn_state_check
    CHECK (VALUE IN ('queued', 'running', 'completed', 'failed', 'cancelled')) NOT VALID;
ALTER DOMAIN talon_step_state ADD CONSTRAINT talon_step_state_check
    CHECK (VALUE IN ('started', 'completed', 'failed')) NOT VALID;
