-- The cloud_tasks backend: which fire (time and schedule version) already has a Cloud Task.
-- A row whose next fire has no task yet is what the after-commit hook and the sweep enqueue
-- (no index for that: the sweep is periodic, and an index would slow every fire's update).
ALTER TABLE schedule_state
    ADD COLUMN task_fire_at timestamptz,
    ADD COLUMN task_version bigint;
