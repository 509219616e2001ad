-- creep 0021: a tenant's cap on active tasks (max_active_tasks) counts every unfinished task,
-- PENDING ones too: it counted QUEUED + RUNNING only, so a capped tenant could submit any
-- number of delayed tasks (run_after ahead) or tasks waiting on dependencies, each counted
-- only once due. task_queue_active (the count's index, and the rescuer's for RUNNING rows)
-- covers PENDING rows as well, i.e. all of task_queue. A claim or completion writes it as
-- before; a promotion (a status change: never a HOT update) inserted its QUEUED entry then
-- and still does; only a task created PENDING adds an entry now.
DROP INDEX task_queue_active;
CREATE INDEX task_queue_active ON task_queue (status, tenant_id)
    WHERE status IN ('PENDING', 'QUEUED', 'RUNNING');
