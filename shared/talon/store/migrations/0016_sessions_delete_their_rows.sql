-- Since 0015 no foreign key cascades a session's deletion to its messages, turns and events.
-- This trigger does, whoever deletes the session (a gateway of any revision during a rollout,
-- an operator's SQL): it fires per deleted session, never on the inserts 0015 sped up. A
-- turn's deletion still cascades to its journaled steps (turn_steps keeps its key).
CREATE FUNCTION talon_delete_session_rows() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM session_events WHERE session_uid = OLD.uid;
    DELETE FROM messages WHERE session_uid = OLD.uid;
    DELETE FROM turns WHERE session_uid = OLD.uid;
    RETURN NULL;
END
$$;
CREATE TRIGGER sessions_delete_their_rows AFTER DELETE ON sessions
    FOR EACH ROW EXECUTE FUNCTION talon_delete_session_rows();
