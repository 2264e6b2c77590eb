-- The primary key (namespace, schedule, fire_at) already serves "latest fires first" by a
-- backward scan; the extra index only slowed every fire's insert.
DROP INDEX IF EXISTS schedule_fires_recent;
