-- Who holds a claimed outbox row (the postgres broker): the claiming worker's liveness owner
-- id, or for a retry that waits on another worker's turn, that worker's. A row whose holder
-- holds no liveness lock (store/liveness.py) is available again at once, not only after
-- claimed_until: a crashed worker's deliveries are taken over in about a second.
ALTER TABLE outbox ADD COLUMN claimed_by text;
