-- creep 0001: task orders, their dependencies and their events.
-- Timestamps are INTEGER microseconds since the Unix epoch (UTC): exact, compact, and
-- arithmetic in SQL (deadlines, expiries) needs no date parsing.
CREATE TABLE tasks (
    task_id                 TEXT PRIMARY KEY,
    idempotency_key         TEXT NOT NULL,
    request_hash            TEXT NOT NULL,
    tenant_id               TEXT NOT NULL,
    project_id              TEXT,
    env                     TEXT NOT NULL,
    external_ref            TEXT,
    task_type               TEXT NOT NULL,
    task_category           TEXT,
    description             TEXT,
    priority                INTEGER NOT NULL DEFAULT 50 CHECK (priority BETWEEN 0 AND 100),
    timeout_ms              INTEGER NOT NULL CHECK (timeout_ms > 0),
    max_total_cost          TEXT,
    currency                TEXT NOT NULL,
    business_value_hint     TEXT,
    status                  TEXT NOT NULL CHECK (status IN ('PENDING', 'QUEUED', 'RUNNING', 'SUCCESS', 'FAILED', 'CANCELLED', 'TIMEOUT', 'DEAD_LETTER')),
    created_at              INTEGER NOT NULL,
    queued_at               INTEGER,
    started_at              INTEGER,
    finished_at             INTEGER,
    updated_at              INTEGER NOT NULL,
    result_code             TEXT,
    result_message          TEXT,
    task_version            INTEGER NOT NULL DEFAULT 1 CHECK (task_version >= 1),
    lease_ids               TEXT NOT NULL DEFAULT '[]',
    resource_hints          TEXT NOT NULL DEFAULT '[]',
    constraints             TEXT NOT NULL DEFAULT '{}',
    tenant_policies_version TEXT,
    tags                    TEXT NOT NULL DEFAULT '[]',
    batch_id                TEXT,
    progress                INTEGER NOT NULL DEFAULT 0 CHECK (progress BETWEEN 0 AND 100),
    progress_message        TEXT,
    input_payload           TEXT,
    result_payload          TEXT,
    channel                 TEXT,
    correlation_id          TEXT NOT NULL,
    depends_on              TEXT NOT NULL DEFAULT '[]',
    has_dependants          INTEGER NOT NULL DEFAULT 0,
    attempt                 INTEGER NOT NULL DEFAULT 0 CHECK (attempt >= 0),
    max_attempts            INTEGER NOT NULL CHECK (max_attempts >= 1),
    run_after               INTEGER NOT NULL,
    last_error              TEXT,
    claimed_by              TEXT,
    claim_token             TEXT,
    claim_expires_at        INTEGER,
    deadline_at             INTEGER,
    cancel_requested        INTEGER NOT NULL DEFAULT 0,
    deleted_at              INTEGER
);

CREATE UNIQUE INDEX tasks_idempotency ON tasks (tenant_id, env, idempotency_key);
-- Only runnable rows are indexed for the claim, so finished history does not slow it down.
CREATE INDEX tasks_runnable ON tasks (priority DESC, created_at) WHERE status = 'QUEUED';
CREATE INDEX tasks_pending ON tasks (run_after) WHERE status = 'PENDING';
-- deadline_at is set once per claim; heartbeats touch claim_expires_at, which no index holds.
CREATE INDEX tasks_running ON tasks (deadline_at) WHERE status = 'RUNNING';
CREATE INDEX tasks_tenant_created ON tasks (tenant_id, created_at);
CREATE INDEX tasks_batch ON tasks (batch_id) WHERE batch_id IS NOT NULL;

-- The transition table, enforced by the database as well as in Python.
CREATE TRIGGER tasks_transition_guard BEFORE UPDATE OF status ON tasks
WHEN OLD.status <> NEW.status AND (OLD.status || '>' || NEW.status) NOT IN (
    'CANCELLED>QUEUED', 'DEAD_LETTER>QUEUED', 'FAILED>QUEUED', 'PENDING>CANCELLED',
    'PENDING>QUEUED', 'QUEUED>CANCELLED', 'QUEUED>FAILED', 'QUEUED>RUNNING',
    'RUNNING>CANCELLED', 'RUNNING>DEAD_LETTER', 'RUNNING>FAILED', 'RUNNING>QUEUED',
    'RUNNING>SUCCESS', 'RUNNING>TIMEOUT', 'TIMEOUT>QUEUED')
BEGIN
    SELECT RAISE(ABORT, 'illegal task transition');
END;

CREATE TABLE task_dependencies (
    task_id       TEXT NOT NULL REFERENCES tasks (task_id) ON DELETE CASCADE,
    depends_on_id TEXT NOT NULL REFERENCES tasks (task_id) ON DELETE CASCADE,
    PRIMARY KEY (task_id, depends_on_id)
);
CREATE INDEX task_dependencies_reverse ON task_dependencies (depends_on_id);

CREATE TABLE task_events (
    event_id    INTEGER PRIMARY KEY AUTOINCREMENT,
    task_id     TEXT NOT NULL,
    tenant_id   TEXT NOT NULL,
    event_type  TEXT NOT NULL,
    from_status TEXT,
    to_status   TEXT,
    attempt     INTEGER NOT NULL DEFAULT 0,
    payload     TEXT NOT NULL DEFAULT '{}',
    created_at  INTEGER NOT NULL
);
CREATE INDEX task_events_task ON task_events (task_id, event_id);

CREATE TRIGGER task_events_no_update BEFORE UPDATE ON task_events
BEGIN
    SELECT RAISE(ABORT, 'task_events is append-only');
END;
