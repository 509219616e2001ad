-- creep 0015: listings and sweeps that read a history table whole as it grows. New index
-- entries of each go to the end of their range (time-ordered), so writes stay cheap:
-- - a tenant's asset events, oldest first (GET /v1/events, its CSV export);
-- - tasks by creation, newest first, for an admin's list across tenants, and for the task
--   retention sweep (finished before the cutoff implies created before it);
-- - a tenant's leases, and an asset's (GET /v1/leases): the asset's one costs a leased task
--   an index entry among its asset's, as asset_events_asset does.
CREATE INDEX asset_events_tenant ON asset_events (tenant_id, occurred_at, seq);
CREATE INDEX tasks_created ON tasks (created_at, task_id);
CREATE INDEX leases_tenant ON leases (tenant_id, acquired_at);
CREATE INDEX leases_asset ON leases (asset_id, acquired_at);
