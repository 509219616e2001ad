-- creep 0017: a tenant's audit log, newest first (GET /v1/audit with a tenant key, or
-- ?tenant_id=), seeks the tenant instead of walking every tenant's rows from the newest.
CREATE INDEX audit_events_tenant ON audit_events (tenant_id, seq);
