-- The running turns and their lease owners: the orphan sweep of Pub/Sub pull workers
-- (runtime/orphans.py) looks here for turns whose owner died, every takeoverPollSeconds, so
-- its cost follows the turns running fleet-wide, not the open turns queued behind them.
CREATE INDEX turns_running ON turns (lease_owner) INCLUDE (session_uid) WHERE state = 'running';
