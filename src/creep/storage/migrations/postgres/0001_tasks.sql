-- creep 0001: task orders, their dependencies and their events.
CREATE TABLE tasks (
    task_id                 uuid PRIMARY KEY,
    idempotency_key         text NOT NULL,
    request_hash            text NOT NULL,
    tenant_id               text NOT NULL,
    project_id              text,
    env                     text NOT NULL,
    external_ref            text,
    task_type               text NOT NULL,
    task_category           text,
    description             text,
    priority                smallint NOT NULL DEFAULT 50 CHECK (priority BETWEEN 0 AND 100),
    timeout_ms              bigint NOT NULL CHECK (timeout_ms > 0),
    max_total_cost          numeric,
    currency                text NOT NULL,
    business_value_hint     numeric,
    status                  text NOT NULL CHECK (status IN ('PENDING', 'QUEUED', 'RUNNING', 'SUCCESS', 'FAILED', 'CANCELLED', 'TIMEOUT', 'DEAD_LETTER')),
    created_at              timestamptz NOT NULL,
    queued_at               timestamptz,
    started_at              timestamptz,
    finished_at             timestamptz,
    updated_at              timestamptz NOT NULL,
    result_code             text,
    result_message          text,
    task_version            integer NOT NULL DEFAULT 1 CHECK (task_version >= 1),
    lease_ids               jsonb NOT NULL DEFAULT '[]',
    resource_hints          jsonb NOT NULL DEFAULT '[]',
    constraints             jsonb NOT NULL DEFAULT '{}',
    tenant_policies_version text,
    tags                    jsonb NOT NULL DEFAULT '[]',
    batch_id                text,
    progress                smallint NOT NULL DEFAULT 0 CHECK (progress BETWEEN 0 AND 100),
    progress_message        text,
    input_payload           jsonb,
    result_payload          jsonb,
    channel                 text,
    correlation_id          text NOT NULL,
    depends_on              jsonb NOT NULL DEFAULT '[]',
    has_dependants          boolean NOT NULL DEFAULT false,
    attempt                 integer NOT NULL DEFAULT 0 CHECK (attempt >= 0),
    max_attempts            integer NOT NULL CHECK (max_attempts >= 1),
    run_after               timestamptz NOT NULL,
    last_error              text,
    claimed_by              text,
    claim_token             uuid,
    claim_expires_at        timestamptz,
    deadline_at             timestamptz,
    cancel_requested        boolean NOT NULL DEFAULT false,
    deleted_at              timestamptz
);
-- Room on each page for HOT updates: heartbeats and completions rewrite rows in place.
ALTER TABLE tasks SET (fillfactor = 80);

CREATE UNIQUE INDEX tasks_idempotency ON tasks (tenant_id, env, idempotency_key);
-- Only runnable rows are indexed for the claim, so finished history does not slow it down.
CREATE INDEX tasks_runnable ON tasks (priority DESC, created_at) WHERE status = 'QUEUED';
CREATE INDEX tasks_pending ON tasks (run_after) WHERE status = 'PENDING';
-- deadline_at is set once per claim; heartbeats touch claim_expires_at, which no index holds.
CREATE INDEX tasks_running ON tasks (deadline_at) WHERE status = 'RUNNING';
CREATE INDEX tasks_tenant_created ON tasks (tenant_id, created_at);
CREATE INDEX tasks_batch ON tasks (batch_id) WHERE batch_id IS NOT NULL;

-- The transition table, enforced by the database as well as in Python.
CREATE FUNCTION tasks_transition_guard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'illegal task transition % -> %', OLD.status, NEW.status
        USING ERRCODE = 'check_violation';
END
$$;
CREATE TRIGGER tasks_transition_guard BEFORE UPDATE OF status ON tasks FOR EACH ROW
WHEN (OLD.status <> NEW.status AND (OLD.status || '>' || NEW.status) NOT IN (
    'CANCELLED>QUEUED', 'DEAD_LETTER>QUEUED', 'FAILED>QUEUED', 'PENDING>CANCELLED',
    'PENDING>QUEUED', 'QUEUED>CANCELLED', 'QUEUED>FAILED', 'QUEUED>RUNNING',
    'RUNNING>CANCELLED', 'RUNNING>DEAD_LETTER', 'RUNNING>FAILED', 'RUNNING>QUEUED',
    'RUNNING>SUCCESS', 'RUNNING>TIMEOUT', 'TIMEOUT>QUEUED'))
EXECUTE FUNCTION tasks_transition_guard();

CREATE TABLE task_dependencies (
    task_id       uuid NOT NULL REFERENCES tasks (task_id) ON DELETE CASCADE,
    depends_on_id uuid NOT NULL REFERENCES tasks (task_id) ON DELETE CASCADE,
    PRIMARY KEY (task_id, depends_on_id)
);
CREATE INDEX task_dependencies_reverse ON task_dependencies (depends_on_id);

CREATE TABLE task_events (
    event_id    bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- The writing transaction: readers order by (txid, event_id) and stop at the oldest
    -- transaction still open, so a cursor never skips an event that commits late.
    txid        xid8 NOT NULL DEFAULT pg_current_xact_id(),
    task_id     uuid NOT NULL,
    tenant_id   text NOT NULL,
    event_type  text NOT NULL,
    from_status text,
    to_status   text,
    attempt     integer NOT NULL DEFAULT 0,
    payload     jsonb NOT NULL DEFAULT '{}',
    created_at  timestamptz NOT NULL
);
CREATE INDEX task_events_task ON task_events (task_id, event_id);
CREATE INDEX task_events_stream ON task_events (txid, event_id);

CREATE FUNCTION task_events_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'task_events is append-only' USING ERRCODE = 'insufficient_privilege';
END
$$;
CREATE TRIGGER task_events_no_update BEFORE UPDATE ON task_events FOR EACH ROW
EXECUTE FUNCTION task_events_append_only();
