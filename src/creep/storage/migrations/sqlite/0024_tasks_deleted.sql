-- creep 0024: the recycle bin (GET /v1/tasks?deleted=true, its counts) is read through a
-- partial index of the deleted tasks, newest first as it lists them: without it, listing a
-- bin of twenty tasks read the whole task table. Only a delete or a restore writes an entry
-- (deleted_at is never set on a task a worker runs).
CREATE INDEX tasks_deleted ON tasks (created_at, task_id) WHERE deleted_at IS NOT NULL;
