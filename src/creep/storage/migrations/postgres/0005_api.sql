-- creep 0003 (REST API): tenants, API keys, the audit log (seed 003), batches (seed 004) and
-- the rate-limit buckets every API process shares. audit_events.timestamp is Unix
-- milliseconds as seed 003 defines it.
CREATE TABLE tenants (
    tenant_id             text PRIMARY KEY,
    name                  text NOT NULL,
    rate_limit_per_second double precision CHECK (rate_limit_per_second IS NULL OR rate_limit_per_second >= 0),
    rate_limit_burst      integer CHECK (rate_limit_burst IS NULL OR rate_limit_burst >= 1),
    max_active_tasks      integer CHECK (max_active_tasks IS NULL OR max_active_tasks >= 0),
    created_at            timestamptz NOT NULL
);

CREATE TABLE api_keys (
    key_id         text PRIMARY KEY,
    name           text NOT NULL,
    role           text NOT NULL CHECK (role IN ('admin', 'tenant')),
    tenant_id      text REFERENCES tenants (tenant_id),
    read_only      boolean NOT NULL DEFAULT false,
    principal_type text NOT NULL DEFAULT 'service' CHECK (principal_type IN ('user', 'service')),
    key_hash       text NOT NULL UNIQUE,
    key_hint       text NOT NULL,
    created_at     timestamptz NOT NULL,
    revoked_at     timestamptz,
    CHECK ((role = 'admin' AND tenant_id IS NULL) OR (role = 'tenant' AND tenant_id IS NOT NULL))
);

CREATE TABLE audit_events (
    seq            bigserial PRIMARY KEY,
    id             text NOT NULL UNIQUE,
    timestamp      bigint NOT NULL CHECK (timestamp > 0),
    action         text NOT NULL,
    resource_type  text NOT NULL,
    resource       jsonb NOT NULL,
    resource_id    text NOT NULL,
    principal      jsonb NOT NULL,
    principal_uid  text NOT NULL CHECK (principal_uid <> ''),
    tenant_id      text,
    space_path     text,
    diff_object    jsonb,
    client_ip      text,
    user_agent     text,
    request_method text,
    request_id     text,
    data           jsonb NOT NULL DEFAULT '{}',
    created_at     timestamptz NOT NULL
);
CREATE INDEX audit_events_timestamp ON audit_events (timestamp);
CREATE INDEX audit_events_composite ON audit_events (resource_type, action, timestamp);
CREATE INDEX audit_events_principal ON audit_events (principal_uid, seq);
CREATE INDEX audit_events_request ON audit_events (request_id);
CREATE INDEX audit_events_resource ON audit_events (resource_id);

-- Immutable: no UPDATE ever; DELETE only of rows past the 90-day retention (seed 003);
-- no TRUNCATE.
CREATE FUNCTION audit_events_immutable() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        RAISE EXCEPTION 'audit_events is immutable (only rows past the 90-day retention may be deleted)'
            USING ERRCODE = 'check_violation';
    END IF;
    RAISE EXCEPTION 'audit_events is immutable' USING ERRCODE = 'check_violation';
END
$$;
CREATE TRIGGER audit_events_no_update BEFORE UPDATE ON audit_events FOR EACH ROW
EXECUTE FUNCTION audit_events_immutable();
CREATE TRIGGER audit_events_no_delete BEFORE DELETE ON audit_events FOR EACH ROW
WHEN (OLD.timestamp > (extract(epoch FROM now()) - 90 * 86400) * 1000)
EXECUTE FUNCTION audit_events_immutable();
CREATE TRIGGER audit_events_no_truncate BEFORE TRUNCATE ON audit_events
EXECUTE FUNCTION audit_events_immutable();

CREATE TABLE batches (
    batch_id     text PRIMARY KEY,
    tenant_id    text NOT NULL,
    title        text NOT NULL,
    metadata     jsonb NOT NULL DEFAULT '{}',
    total_count  integer NOT NULL CHECK (total_count >= 0),
    created_at   timestamptz NOT NULL,
    updated_at   timestamptz NOT NULL,
    cancelled_at timestamptz
);
CREATE INDEX batches_tenant ON batches (tenant_id, created_at);

CREATE TABLE rate_buckets (
    bucket     text PRIMARY KEY,
    tokens     double precision NOT NULL,
    granted    boolean NOT NULL DEFAULT true,
    updated_at timestamptz NOT NULL
);

-- The per-tenant cap on queued + running tasks counts these rows.
CREATE INDEX tasks_tenant_active ON tasks (tenant_id) WHERE status IN ('QUEUED', 'RUNNING');
