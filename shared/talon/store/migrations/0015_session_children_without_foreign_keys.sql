-- A turn writes ~15 rows into messages, turns and session_events, and each foreign key to
-- sessions cost a trigger per row: a lookup of the session row and a share lock on it, ~6% of
-- PostgreSQL's CPU per turn (issue 19, measured with bench/turns.py). Each of those rows is
-- inserted by the statement that moves its session's counters (an UPDATE of the session row
-- whose RETURNING feeds the INSERT), so its session exists and is locked by construction; a
-- session deleted first leaves that UPDATE nothing to return, and the INSERT writes nothing.
-- Deleting a session deletes these rows explicitly (sessions/service.py). turn_steps keeps its
-- key to turns: a step is journaled under the turn's lease, not the session's lock.
ALTER TABLE messages DROP CONSTRAINT messages_session_uid_fkey;
ALTER TABLE turns DROP CONSTRAINT turns_session_uid_fkey;
ALTER TABLE session_events DROP CONSTRAINT session_events_session_uid_fkey;
