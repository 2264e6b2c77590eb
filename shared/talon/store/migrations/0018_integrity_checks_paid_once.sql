-- Issue 19: integrity checks a turn paid for on every statement, paid once instead (together
-- ~6% of PostgreSQL's CPU per turn, bench/turns.py).
--
-- 1. turn_steps' foreign key to turns ran a trigger for every step inserted: a lookup of the
--    turn row and a KEY SHARE lock on it. Every step is written by a transaction that has
--    already locked its turn row and its session's (the claim, or the lease's renewal:
--    store/turn_steps.py), so its turn exists at commit and a session's deletion waits for
--    it. A turn's deletion still takes its steps: the trigger below fires per statement,
--    on deletes only, never on the inserts.
ALTER TABLE turn_steps DROP CONSTRAINT turn_steps_turn_id_fkey;
CREATE FUNCTION talon_delete_turn_steps() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM turn_steps WHERE turn_id IN (SELECT id FROM gone);
    RETURN NULL;
END
$$;
CREATE TRIGGER turns_delete_their_steps AFTER DELETE ON turns REFERENCING OLD TABLE AS gone
    FOR EACH STATEMENT EXECUTE FUNCTION talon_delete_turn_steps();

-- 2. A CHECK constraint is read back from its stored text and planned for every statement
--    that inserts into or updates its table, whatever columns it sets; a domain's constraint
--    is prepared once per connection and checked only where a value is assigned. The same
--    value lists, as domains. Each column changes type while its domain has no constraint
--    yet: no table is rewritten (tests/test_integrity.py), only turns' two partial indexes
--    are built again (their predicates name the state; they hold the open turns only), and
--    then each constraint validates the rows with a scan, all under the tables' locks.
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
    CHECK (VALUE IN ('user', 'assistant', 'tool', 'system'));
ALTER DOMAIN talon_turn_state ADD CONSTRAINT talon_turn_state_check
    CHECK (VALUE IN ('queued', 'running', 'completed', 'failed', 'cancelled'));
ALTER DOMAIN talon_step_state ADD CONSTRAINT talon_step_state_check
    CHECK (VALUE IN ('started', 'completed', 'failed'));
