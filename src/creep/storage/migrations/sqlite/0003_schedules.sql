-- creep 0003: schedules (seed 003): ScheduledTask, TaskExecution; task_locks gains a sweep index.
CREATE TABLE scheduled_tasks (
    uid                   TEXT PRIMARY KEY,
    tenant_id             TEXT NOT NULL,
    name                  TEXT NOT NULL,
    type                  TEXT NOT NULL,
    description           TEXT,
    is_recurring          INTEGER NOT NULL DEFAULT 0,
    cron_expr             TEXT,
    "interval"            INTEGER CHECK ("interval" > 0),
    timezone              TEXT NOT NULL DEFAULT 'UTC',
    anchor_at             INTEGER,
    next_run              INTEGER,
    enabled               INTEGER NOT NULL DEFAULT 1,
    max_duration_seconds  INTEGER NOT NULL DEFAULT 3600 CHECK (max_duration_seconds > 0),
    max_retries           INTEGER NOT NULL DEFAULT 3 CHECK (max_retries >= 0),
    timeout_grace_period  INTEGER NOT NULL DEFAULT 30
        CHECK (timeout_grace_period >= 0 AND timeout_grace_period < max_duration_seconds),
    max_concurrent        INTEGER NOT NULL DEFAULT 1 CHECK (max_concurrent >= 1),
    priority              INTEGER NOT NULL DEFAULT 0 CHECK (priority BETWEEN 0 AND 100),
    labels                TEXT NOT NULL DEFAULT '{}',
    data                  TEXT CHECK (length(CAST(data AS BLOB)) <= 10240),
    misfire_policy        TEXT NOT NULL DEFAULT 'once' CHECK (misfire_policy IN ('skip', 'once', 'all')),
    misfire_limit         INTEGER NOT NULL DEFAULT 10 CHECK (misfire_limit >= 1),
    misfire_grace_seconds INTEGER NOT NULL DEFAULT 60 CHECK (misfire_grace_seconds >= 0),
    project_id            TEXT,
    env                   TEXT NOT NULL DEFAULT 'default',
    resource_hints        TEXT NOT NULL DEFAULT '[]',
    tags                  TEXT NOT NULL DEFAULT '[]',
    max_total_cost        TEXT,
    currency              TEXT NOT NULL DEFAULT 'USD',
    total_executions      INTEGER NOT NULL DEFAULT 0,
    success_executions    INTEGER NOT NULL DEFAULT 0,
    failure_executions    INTEGER NOT NULL DEFAULT 0,
    consecutive_failures  INTEGER NOT NULL DEFAULT 0,
    last_executed_at      INTEGER,
    last_failure_error    TEXT,
    version               INTEGER NOT NULL DEFAULT 1,
    created_at            INTEGER NOT NULL,
    updated_at            INTEGER NOT NULL,
    CHECK (cron_expr IS NULL OR "interval" IS NULL)
);
CREATE UNIQUE INDEX scheduled_tasks_name ON scheduled_tasks (tenant_id, name);
CREATE INDEX scheduled_tasks_due ON scheduled_tasks (next_run) WHERE enabled = 1;
CREATE INDEX scheduled_tasks_type ON scheduled_tasks (type);

CREATE TABLE task_executions (
    id                    INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant_id             TEXT NOT NULL,
    task_uid              TEXT NOT NULL,
    task_name             TEXT NOT NULL,
    task_type             TEXT NOT NULL,
    execution_uid         TEXT NOT NULL UNIQUE,
    task_id               TEXT,
    run_by                TEXT NOT NULL,
    scheduled_at          INTEGER NOT NULL,
    started_at            INTEGER NOT NULL,
    finished_at           INTEGER,
    state                 TEXT NOT NULL CHECK (state IN ('pending', 'running', 'success', 'failure', 'timeout', 'cancelled', 'interrupted')),
    result                TEXT,
    result_truncated      INTEGER NOT NULL DEFAULT 0,
    error_message         TEXT,
    error_stack           TEXT,
    error_stack_truncated INTEGER NOT NULL DEFAULT 0,
    duration_ms           INTEGER NOT NULL DEFAULT 0 CHECK (duration_ms >= 0),
    progress              INTEGER NOT NULL DEFAULT 0 CHECK (progress BETWEEN 0 AND 100),
    retry_count           INTEGER NOT NULL DEFAULT 0 CHECK (retry_count >= 0),
    trigger_type          TEXT NOT NULL CHECK (trigger_type IN ('scheduled', 'manual')),
    trigger_by            TEXT,
    created_at            INTEGER NOT NULL,
    updated_at            INTEGER NOT NULL,
    CHECK (finished_at IS NULL OR finished_at >= started_at)
);
-- Exactly once: one scheduled execution per (schedule, slot), whoever fires it.
CREATE UNIQUE INDEX task_executions_slot ON task_executions (task_uid, scheduled_at)
    WHERE trigger_type = 'scheduled';
CREATE INDEX task_executions_active ON task_executions (task_uid) WHERE state IN ('pending', 'running');
-- The scheduler's follow-the-task sweep walks only the open executions.
CREATE INDEX task_executions_open ON task_executions (id) WHERE state IN ('pending', 'running');
CREATE INDEX task_executions_started ON task_executions (started_at DESC);
CREATE INDEX task_executions_composite ON task_executions (task_name, state, started_at DESC);
CREATE INDEX task_executions_tenant ON task_executions (tenant_id, started_at DESC);
CREATE INDEX task_executions_finished ON task_executions (finished_at) WHERE finished_at IS NOT NULL;

CREATE TRIGGER task_executions_transition_guard BEFORE UPDATE OF state ON task_executions
WHEN OLD.state <> NEW.state AND (OLD.state || '>' || NEW.state) NOT IN (
    'pending>cancelled', 'pending>failure', 'pending>interrupted', 'pending>running',
    'pending>success', 'pending>timeout', 'running>cancelled', 'running>failure',
    'running>interrupted', 'running>success', 'running>timeout')
BEGIN
    SELECT RAISE(ABORT, 'illegal execution transition');
END;

CREATE INDEX task_locks_updated ON task_locks (updated_at) WHERE state <> 'active';

-- TaskLock transitions (domain/lock.py): a live lock cannot be taken over.
CREATE TRIGGER task_locks_transition_guard BEFORE UPDATE ON task_locks
WHEN NOT (
    (OLD.state = 'active' AND NEW.state IN ('released', 'expired'))
    OR (OLD.state IN ('released', 'expired') AND NEW.state = 'active')
    OR (OLD.state = 'active' AND NEW.state = 'active'
        AND (NEW.token = OLD.token OR OLD.expires_at < NEW.acquired_at)))
BEGIN
    SELECT RAISE(ABORT, 'illegal lock transition');
END;
