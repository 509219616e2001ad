-- creep 0003 (assets): asset pool, leases, cost ledger, the causal asset event log.
-- Money is TEXT holding the exact decimal; timestamps INTEGER microseconds (as in 0001).

-- Hinted tasks get their own claim step: plain claims read tasks_runnable_plain and never
-- look at a hinted task; the hinted step reads tasks_runnable_hinted (empty when no task
-- has resource_hints). has_hints is computed by SQLite, so inserts need no change.
ALTER TABLE tasks ADD COLUMN has_hints INTEGER GENERATED ALWAYS AS (length(resource_hints) > 2) VIRTUAL;
DROP INDEX tasks_runnable;
CREATE INDEX tasks_runnable_plain ON tasks (priority DESC, created_at) WHERE status = 'QUEUED' AND has_hints = false;
CREATE INDEX tasks_runnable_hinted ON tasks (priority DESC, created_at) WHERE status = 'QUEUED' AND has_hints = true;

CREATE TABLE assets (
    asset_id            TEXT PRIMARY KEY,
    tenant_id           TEXT NOT NULL,
    project_id          TEXT,
    env                 TEXT,
    sku_category        TEXT NOT NULL,
    sku_code            TEXT NOT NULL,
    attributes          TEXT NOT NULL DEFAULT '{}',
    status              TEXT NOT NULL CHECK (status IN ('NEW', 'READY', 'IN_USE', 'COOLING', 'BANNED', 'SOLD', 'ARCHIVED')),
    max_concurrency     INTEGER NOT NULL CHECK (max_concurrency >= 1),
    -- The over-allocation guard, enforced by the database whatever runs at once.
    current_concurrency INTEGER NOT NULL DEFAULT 0 CHECK (current_concurrency >= 0 AND current_concurrency <= max_concurrency),
    health_score        INTEGER NOT NULL CHECK (health_score BETWEEN 0 AND 100),
    cooldown_seconds    INTEGER NOT NULL DEFAULT 0 CHECK (cooldown_seconds >= 0),
    cooldown_until      INTEGER,
    cost_per_lease      TEXT NOT NULL DEFAULT '0',
    currency            TEXT NOT NULL,
    version             INTEGER NOT NULL DEFAULT 1 CHECK (version >= 1),
    created_at          INTEGER NOT NULL,
    updated_at          INTEGER NOT NULL
);
CREATE INDEX assets_leasable ON assets (tenant_id, sku_category, health_score DESC) WHERE status IN ('READY', 'IN_USE');
CREATE INDEX assets_cooling ON assets (cooldown_until) WHERE status = 'COOLING';
CREATE INDEX assets_tenant ON assets (tenant_id, created_at, asset_id);

CREATE TRIGGER assets_transition_guard BEFORE UPDATE OF status ON assets
WHEN OLD.status <> NEW.status AND (OLD.status || '>' || NEW.status) NOT IN (
    'BANNED>ARCHIVED', 'BANNED>READY', 'COOLING>ARCHIVED', 'COOLING>BANNED', 'COOLING>READY',
    'COOLING>SOLD', 'IN_USE>ARCHIVED', 'IN_USE>BANNED', 'IN_USE>COOLING', 'IN_USE>READY',
    'IN_USE>SOLD', 'NEW>ARCHIVED', 'NEW>BANNED', 'NEW>READY', 'READY>ARCHIVED', 'READY>BANNED',
    'READY>COOLING', 'READY>IN_USE', 'READY>SOLD', 'SOLD>ARCHIVED')
BEGIN
    SELECT RAISE(ABORT, 'illegal asset transition');
END;

CREATE TABLE leases (
    lease_id    TEXT PRIMARY KEY,
    tenant_id   TEXT NOT NULL,
    task_id     TEXT NOT NULL,
    asset_id    TEXT NOT NULL REFERENCES assets (asset_id),
    status      TEXT NOT NULL CHECK (status IN ('ACTIVE', 'RELEASED', 'EXPIRED', 'REVOKED')),
    acquired_at INTEGER NOT NULL,
    expires_at  INTEGER,
    released_at INTEGER,
    cost        TEXT NOT NULL,
    currency    TEXT NOT NULL,
    claim_token TEXT NOT NULL,
    hint_index  INTEGER NOT NULL
);
CREATE INDEX leases_task ON leases (task_id);
CREATE INDEX leases_asset_active ON leases (asset_id) WHERE status = 'ACTIVE';

CREATE TRIGGER leases_transition_guard BEFORE UPDATE OF status ON leases
WHEN OLD.status <> NEW.status AND (OLD.status || '>' || NEW.status) NOT IN (
    'ACTIVE>EXPIRED', 'ACTIVE>RELEASED', 'ACTIVE>REVOKED')
BEGIN
    SELECT RAISE(ABORT, 'illegal lease transition');
END;

-- seq is the rowid: rows are never deleted, so it only grows (no AUTOINCREMENT bookkeeping).
CREATE TABLE ledger_entries (
    seq         INTEGER PRIMARY KEY,
    entry_id    TEXT NOT NULL UNIQUE,
    tenant_id   TEXT NOT NULL,
    project_id  TEXT,
    task_id     TEXT,
    asset_id    TEXT,
    lease_id    TEXT,
    entry_type  TEXT NOT NULL CHECK (entry_type IN ('COST', 'REVENUE', 'REFUND', 'TASK_BURN', 'ADJUSTMENT')),
    amount      TEXT NOT NULL,
    currency    TEXT NOT NULL,
    description TEXT,
    occurred_at INTEGER NOT NULL,
    recorded_at INTEGER NOT NULL
);
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

-- Few indexes, as events are written three per leased task: event_id (chains), asset and
-- correlation timelines. Events of a task share its correlation_id, so "by task" reads the
-- correlation index. seq (the rowid) orders events written in the same instant.
CREATE TABLE asset_events (
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
    severity        TEXT CHECK (severity IN ('DEBUG', 'INFO', 'WARN', 'ERROR')),
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
    version         INTEGER NOT NULL DEFAULT 1 CHECK (version >= 1)
);
CREATE INDEX asset_events_asset ON asset_events (asset_id, occurred_at);
CREATE INDEX asset_events_correlation ON asset_events (correlation_id, occurred_at) WHERE correlation_id IS NOT NULL;

CREATE TRIGGER asset_events_no_update BEFORE UPDATE ON asset_events
BEGIN
    SELECT RAISE(ABORT, 'asset_events is append-only');
END;
CREATE TRIGGER asset_events_no_delete BEFORE DELETE ON asset_events
BEGIN
    SELECT RAISE(ABORT, 'asset_events is append-only');
END;

CREATE TABLE asset_ban_policies (
    tenant_id           TEXT NOT NULL,
    sku_category        TEXT NOT NULL,
    max_failures        INTEGER NOT NULL CHECK (max_failures >= 1),
    window_seconds      INTEGER NOT NULL CHECK (window_seconds >= 1),
    failure_event_types TEXT NOT NULL DEFAULT '[]',
    updated_at          INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, sku_category)
);
