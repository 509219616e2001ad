-- creep 0003 (REST API): tenants, API keys, the audit log (seed 003), batches (seed 004) and
-- the rate-limit buckets every API process shares. Timestamps: INTEGER microseconds (UTC),
-- except audit_events.timestamp, which is Unix milliseconds as seed 003 defines it.
CREATE TABLE tenants (
    tenant_id             TEXT PRIMARY KEY,
    name                  TEXT NOT NULL,
    rate_limit_per_second REAL CHECK (rate_limit_per_second IS NULL OR rate_limit_per_second >= 0),
    rate_limit_burst      INTEGER CHECK (rate_limit_burst IS NULL OR rate_limit_burst >= 1),
    max_active_tasks      INTEGER CHECK (max_active_tasks IS NULL OR max_active_tasks >= 0),
    created_at            INTEGER NOT NULL
);

CREATE TABLE api_keys (
    key_id         TEXT PRIMARY KEY,
    name           TEXT NOT NULL,
    role           TEXT NOT NULL CHECK (role IN ('admin', 'tenant')),
    tenant_id      TEXT REFERENCES tenants (tenant_id),
    read_only      INTEGER NOT NULL DEFAULT 0,
    principal_type TEXT NOT NULL DEFAULT 'service' CHECK (principal_type IN ('user', 'service')),
    key_hash       TEXT NOT NULL UNIQUE,
    key_hint       TEXT NOT NULL,
    created_at     INTEGER NOT NULL,
    revoked_at     INTEGER,
    CHECK ((role = 'admin' AND tenant_id IS NULL) OR (role = 'tenant' AND tenant_id IS NOT NULL))
);

CREATE TABLE audit_events (
    seq            INTEGER PRIMARY KEY AUTOINCREMENT,
    id             TEXT NOT NULL UNIQUE,
    timestamp      INTEGER NOT NULL CHECK (timestamp > 0),
    action         TEXT NOT NULL,
    resource_type  TEXT NOT NULL,
    resource       TEXT NOT NULL,
    resource_id    TEXT NOT NULL,
    principal      TEXT NOT NULL,
    principal_uid  TEXT NOT NULL CHECK (principal_uid <> ''),
    tenant_id      TEXT,
    space_path     TEXT,
    diff_object    TEXT,
    client_ip      TEXT,
    user_agent     TEXT,
    request_method TEXT,
    request_id     TEXT,
    data           TEXT NOT NULL DEFAULT '{}',
    created_at     INTEGER NOT NULL
);
CREATE INDEX audit_events_timestamp ON audit_events (timestamp);
CREATE INDEX audit_events_composite ON audit_events (resource_type, action, timestamp);
CREATE INDEX audit_events_principal ON audit_events (principal_uid, seq);
CREATE INDEX audit_events_request ON audit_events (request_id);
CREATE INDEX audit_events_resource ON audit_events (resource_id);

-- Immutable: no UPDATE ever; DELETE only of rows past the 90-day retention (seed 003).
CREATE TRIGGER audit_events_no_update BEFORE UPDATE ON audit_events
BEGIN
    SELECT RAISE(ABORT, 'audit_events is immutable');
END;
CREATE TRIGGER audit_events_no_delete BEFORE DELETE ON audit_events
WHEN OLD.timestamp > (CAST(strftime('%s', 'now') AS INTEGER) - 90 * 86400) * 1000
BEGIN
    SELECT RAISE(ABORT, 'audit_events is immutable (only rows past the 90-day retention may be deleted)');
END;

CREATE TABLE batches (
    batch_id     TEXT PRIMARY KEY,
    tenant_id    TEXT NOT NULL,
    title        TEXT NOT NULL,
    metadata     TEXT NOT NULL DEFAULT '{}',
    total_count  INTEGER NOT NULL CHECK (total_count >= 0),
    created_at   INTEGER NOT NULL,
    updated_at   INTEGER NOT NULL,
    cancelled_at INTEGER
);
CREATE INDEX batches_tenant ON batches (tenant_id, created_at);

CREATE TABLE rate_buckets (
    bucket     TEXT PRIMARY KEY,
    tokens     REAL NOT NULL,
    granted    INTEGER NOT NULL DEFAULT 1,
    updated_at INTEGER NOT NULL
);

-- The per-tenant cap on queued + running tasks counts these rows.
CREATE INDEX tasks_tenant_active ON tasks (tenant_id) WHERE status IN ('QUEUED', 'RUNNING');
