-- creep 0012: the CHECK constraints of the lease hot path compare with OR instead of IN.
-- SQLite codes `x IN (<3 or more constants>)` in a CHECK constraint as an ephemeral table it
-- clears, fills and probes for every row written (a trigger or query builds it once; a
-- constraint cannot): ~1.7 us per row for 4 values, against ~0.1 us for the same test written
-- with OR. A leased task writes three asset events, a lease (inserted, then released) and a
-- ledger entry: ~12 us of its ~240. The accepted values are exactly those of 0004 (a NULL
-- severity still passes). SQLite cannot alter a CHECK constraint, so each table is rebuilt
-- with its rows (seq kept, so the write order is kept), indexes and triggers as before.

CREATE TABLE leases_new (
    lease_id    TEXT PRIMARY KEY,
    tenant_id   TEXT NOT NULL,
    task_id     TEXT NOT NULL,
    asset_id    TEXT NOT NULL REFERENCES assets (asset_id),
    status      TEXT NOT NULL CHECK (status = 'ACTIVE' OR status = 'RELEASED'
                                     OR status = 'EXPIRED' OR status = 'REVOKED'),
    acquired_at INTEGER NOT NULL,
    expires_at  INTEGER,
    released_at INTEGER,
    cost        TEXT NOT NULL,
    currency    TEXT NOT NULL,
    claim_token TEXT NOT NULL,
    hint_index  INTEGER NOT NULL
);
INSERT INTO leases_new SELECT * FROM leases;
DROP TABLE leases;
ALTER TABLE leases_new RENAME TO leases;
CREATE INDEX leases_task ON leases (task_id);
CREATE INDEX leases_asset_active ON leases (asset_id) WHERE status = 'ACTIVE';
CREATE TRIGGER leases_transition_guard BEFORE UPDATE OF status ON leases
WHEN OLD.status <> NEW.status AND OLD.status <> 'ACTIVE'
BEGIN
    SELECT RAISE(ABORT, 'illegal lease transition');
END;

CREATE TABLE ledger_entries_new (
    seq         INTEGER PRIMARY KEY,
    entry_id    TEXT NOT NULL UNIQUE,
    tenant_id   TEXT NOT NULL,
    project_id  TEXT,
    task_id     TEXT,
    asset_id    TEXT,
    lease_id    TEXT,
    entry_type  TEXT NOT NULL CHECK (entry_type = 'COST' OR entry_type = 'REVENUE'
                                     OR entry_type = 'REFUND' OR entry_type = 'TASK_BURN'
                                     OR entry_type = 'ADJUSTMENT'),
    amount      TEXT NOT NULL,
    currency    TEXT NOT NULL,
    description TEXT,
    occurred_at INTEGER NOT NULL,
    recorded_at INTEGER NOT NULL
);
INSERT INTO ledger_entries_new SELECT * FROM ledger_entries;
DROP TABLE ledger_entries;
ALTER TABLE ledger_entries_new RENAME TO ledger_entries;
CREATE INDEX ledger_task ON ledger_entries (task_id) WHERE task_id IS NOT NULL;
CREATE INDEX ledger_tenant_time ON ledger_entries (tenant_id, occurred_at);
CREATE TRIGGER ledger_entries_no_update BEFORE UPDATE ON ledger_entries
BEGIN
    SELECT RAISE(ABORT, 'ledger_entries is append-only');
END;
CREATE TRIGGER ledger_entries_no_delete BEFORE DELETE ON ledger_entries
BEGIN
    SELECT RAISE(ABORT, 'ledger_entries is append-only');
END;

CREATE TABLE asset_events_new (
    seq             INTEGER PRIMARY KEY,
    event_id        TEXT NOT NULL UNIQUE,
    tenant_id       TEXT NOT NULL,
    project_id      TEXT,
    env             TEXT,
    asset_id        TEXT NOT NULL,
    task_id         TEXT,
    lease_id        TEXT,
    correlation_id  TEXT,
    causation_id    TEXT,
    event_type      TEXT NOT NULL,
    source          TEXT,
    severity        TEXT CHECK (severity = 'DEBUG' OR severity = 'INFO' OR severity = 'WARN'
                                OR severity = 'ERROR'),
    old_status      TEXT,
    new_status      TEXT,
    message         TEXT,
    error_code      TEXT,
    error_message   TEXT,
    provider_status TEXT,
    http_status     INTEGER CHECK (http_status BETWEEN 100 AND 599),
    latency_ms      INTEGER CHECK (latency_ms >= 0),
    retryable       INTEGER,
    occurred_at     INTEGER NOT NULL,
    recorded_at     INTEGER NOT NULL,
    tags            TEXT NOT NULL DEFAULT '[]',
    context         TEXT NOT NULL DEFAULT '{}',
    version         INTEGER NOT NULL DEFAULT 1 CHECK (version >= 1),
    task_priority   INTEGER NOT NULL DEFAULT 0
);
INSERT INTO asset_events_new SELECT * FROM asset_events;
DROP TABLE asset_events;
ALTER TABLE asset_events_new RENAME TO asset_events;
CREATE INDEX asset_events_asset ON asset_events (asset_id, occurred_at);
CREATE INDEX asset_events_correlation ON asset_events (task_priority, correlation_id, occurred_at) WHERE correlation_id IS NOT NULL;
CREATE TRIGGER asset_events_no_update BEFORE UPDATE ON asset_events
BEGIN
    SELECT RAISE(ABORT, 'asset_events is append-only');
END;
CREATE TRIGGER asset_events_no_delete BEFORE DELETE ON asset_events
BEGIN
    SELECT RAISE(ABORT, 'asset_events is append-only');
END;
