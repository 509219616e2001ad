-- creep 0020: a tenant's cap on active tasks (max_active_tasks) counts every unfinished task,
-- PENDING ones too: it counted QUEUED + RUNNING only, so a capped tenant could submit any
-- number of delayed tasks (run_after ahead) or tasks waiting on dependencies, each counted
-- only once due. The count's index covers PENDING rows as well. A claim or completion writes
-- it as before (it already changes the status it names); only a task created PENDING adds
-- an entry, which its promotion then moves instead of adding.
DROP INDEX tasks_tenant_active;
CREATE INDEX tasks_tenant_active ON tasks (tenant_id)
    WHERE status IN ('PENDING', 'QUEUED', 'RUNNING');
