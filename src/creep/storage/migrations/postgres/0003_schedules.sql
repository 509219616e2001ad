-- creep 0003: schedules (seed 003): ScheduledTask, TaskExecution; task_locks gains a sweep index.
CREATE TABLE scheduled_tasks (
    uid                   text PRIMARY KEY,
    tenant_id             text NOT NULL,
    name                  text NOT NULL,
    type                  text NOT NULL,
    description           text,
    is_recurring          boolean NOT NULL DEFAULT false,
    cron_expr             text,
    "interval"            bigint CHECK ("interval" > 0),
    timezone              text NOT NULL DEFAULT 'UTC',
    anchor_at             timestamptz,
    next_run              timestamptz,
    enabled               boolean NOT NULL DEFAULT true,
    max_duration_seconds  integer NOT NULL DEFAULT 3600 CHECK (max_duration_seconds > 0),
    max_retries           integer NOT NULL DEFAULT 3 CHECK (max_retries >= 0),
    timeout_grace_period  integer NOT NULL DEFAULT 30
        CHECK (timeout_grace_period >= 0 AND timeout_grace_period < max_duration_seconds),
    max_concurrent        integer NOT NULL DEFAULT 1 CHECK (max_concurrent >= 1),
    priority              integer NOT NULL DEFAULT 0 CHECK (priority BETWEEN 0 AND 100),
    labels                jsonb NOT NULL DEFAULT '{}',
    data                  text CHECK (octet_length(data) <= 10240),
    misfire_policy        text NOT NULL DEFAULT 'once' CHECK (misfire_policy IN ('skip', 'once', 'all')),
    misfire_limit         integer NOT NULL DEFAULT 10 CHECK (misfire_limit >= 1),
    misfire_grace_seconds integer NOT NULL DEFAULT 60 CHECK (misfire_grace_seconds >= 0),
    project_id            text,
    env                   text NOT NULL DEFAULT 'default',
    resource_hints        jsonb NOT NULL DEFAULT '[]',
    tags                  jsonb NOT NULL DEFAULT '[]',
    max_total_cost        numeric,
    currency              text NOT NULL DEFAULT 'USD',
    total_executions      integer NOT NULL DEFAULT 0,
    success_executions    integer NOT NULL DEFAULT 0,
    failure_executions    integer NOT NULL DEFAULT 0,
    consecutive_failures  integer NOT NULL DEFAULT 0,
    last_executed_at      timestamptz,
    last_failure_error    text,
    version               integer NOT NULL DEFAULT 1,
    created_at            timestamptz NOT NULL,
    updated_at            timestamptz NOT NULL,
    CHECK (cron_expr IS NULL OR "interval" IS NULL)
);
CREATE UNIQUE INDEX scheduled_tasks_name ON scheduled_tasks (tenant_id, name);
CREATE INDEX scheduled_tasks_due ON scheduled_tasks (next_run) WHERE enabled;
CREATE INDEX scheduled_tasks_type ON scheduled_tasks (type);

CREATE TABLE task_executions (
    id                    bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id             text NOT NULL,
    task_uid              text NOT NULL,
    task_name             text NOT NULL,
    task_type             text NOT NULL,
    execution_uid         text NOT NULL UNIQUE,
    task_id               uuid,
    run_by                text NOT NULL,
    scheduled_at          timestamptz NOT NULL,
    started_at            timestamptz NOT NULL,
    finished_at           timestamptz,
    state                 text NOT NULL CHECK (state IN ('pending', 'running', 'success', 'failure', 'timeout', 'cancelled', 'interrupted')),
    result                text,
    result_truncated      boolean NOT NULL DEFAULT false,
    error_message         text,
    error_stack           text,
    error_stack_truncated boolean NOT NULL DEFAULT false,
    duration_ms           bigint NOT NULL DEFAULT 0 CHECK (duration_ms >= 0),
    progress              integer NOT NULL DEFAULT 0 CHECK (progress BETWEEN 0 AND 100),
    retry_count           integer NOT NULL DEFAULT 0 CHECK (retry_count >= 0),
    trigger_type          text NOT NULL CHECK (trigger_type IN ('scheduled', 'manual')),
    trigger_by            text,
    created_at            timestamptz NOT NULL,
    updated_at            timestamptz NOT NULL,
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

CREATE FUNCTION task_executions_transition_guard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'illegal execution transition % -> %', OLD.state, NEW.state
        USING ERRCODE = 'check_violation';
END
$$;
CREATE TRIGGER task_executions_transition_guard BEFORE UPDATE OF state ON task_executions
FOR EACH ROW WHEN (OLD.state IS DISTINCT FROM NEW.state AND (OLD.state || '>' || NEW.state) NOT IN (
    'pending>cancelled', 'pending>failure', 'pending>interrupted', 'pending>running',
    'pending>success', 'pending>timeout', 'running>cancelled', 'running>failure',
    'running>interrupted', 'running>success', 'running>timeout'))
EXECUTE FUNCTION task_executions_transition_guard();

CREATE INDEX task_locks_updated ON task_locks (updated_at) WHERE state <> 'active';

-- TaskLock transitions (domain/lock.py): a live lock cannot be taken over.
CREATE FUNCTION task_locks_transition_guard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'illegal lock transition % -> % on %', OLD.state, NEW.state, OLD.lock_key
        USING ERRCODE = 'check_violation';
END
$$;
CREATE TRIGGER task_locks_transition_guard BEFORE UPDATE ON task_locks FOR EACH ROW
WHEN (NOT (
    (OLD.state = 'active' AND NEW.state IN ('released', 'expired'))
    OR (OLD.state IN ('released', 'expired') AND NEW.state = 'active')
    OR (OLD.state = 'active' AND NEW.state = 'active'
        AND (NEW.token = OLD.token OR OLD.expires_at < NEW.acquired_at))))
EXECUTE FUNCTION task_locks_transition_guard();
