-- The cloud_tasks backend: which fire (time and schedule version) already has a Cloud Task.
-- A row whose next fire has no task yet is what the after-commit hook and the sweep enqueue.
ALTER TABLE schedule_state
    ADD COLUMN task_fire_at timestamptz,
    ADD COLUMN task_version bigint;
CREATE INDEX schedule_state_untasked ON schedule_state (next_fire_at)
    WHERE next_fire_at IS NOT NULL
      AND (task_fire_at IS DISTINCT FROM next_fire_at OR task_version IS DISTINCT FROM version);
