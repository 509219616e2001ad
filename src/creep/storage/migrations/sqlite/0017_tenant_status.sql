-- creep 0017: a tenant's PENDING, QUEUED or RUNNING tasks, newest first (GET /v1/tasks with
-- a tenant key and ?status=), seek the tenant and the status instead of walking the tenant's
-- finished tasks from the newest. It replaces tasks_tenant_active (tenant_id, QUEUED and
-- RUNNING only), which the tenant's cap on queued + running tasks counted: the cap counts
-- this one. A claim or a completion changes a row's status either way, so the two indexes
-- cost the queue the same writes.
DROP INDEX tasks_tenant_active;
CREATE INDEX tasks_tenant_status ON tasks (tenant_id, status, created_at, task_id)
    WHERE status IN ('PENDING', 'QUEUED', 'RUNNING');
