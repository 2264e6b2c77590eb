-- The primary key (namespace, schedule, fire_at) already serves "latest fires first" by a
-- backward scan; the extra index only slowed every fire's insert.
DROP INDEX IF EXISTS schedule_fires_recent;

-- The scheduler tick walks due schedules in (next_fire_at, namespace, name) order, batch
-- after batch by keyset.
DROP INDEX IF EXISTS schedule_state_due;
CREATE INDEX schedule_state_due ON schedule_state (next_fire_at, namespace, name)
    WHERE next_fire_at IS NOT NULL;
