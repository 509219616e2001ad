-- creep 0003 (assets): asset pool, leases, cost ledger, the causal asset event log.

-- Hinted tasks get their own claim step: plain claims read tasks_runnable_plain and never
-- look at a hinted task; the hinted step reads tasks_runnable_hinted (empty when no task
-- has resource_hints). has_hints is computed by PostgreSQL, so inserts need no change.
ALTER TABLE tasks ADD COLUMN has_hints boolean GENERATED ALWAYS AS (resource_hints <> '[]'::jsonb) STORED;
DROP INDEX tasks_runnable;
CREATE INDEX tasks_runnable_plain ON tasks (priority DESC, created_at) WHERE status = 'QUEUED' AND has_hints = false;
CREATE INDEX tasks_runnable_hinted ON tasks (priority DESC, created_at) WHERE status = 'QUEUED' AND has_hints = true;

CREATE TABLE assets (
    asset_id            uuid PRIMARY KEY,
    tenant_id           text NOT NULL,
    project_id          text,
    env                 text,
    sku_category        text NOT NULL,
    sku_code            text NOT NULL,
    attributes          jsonb NOT NULL DEFAULT '{}',
    status              text NOT NULL CHECK (status IN ('NEW', 'READY', 'IN_USE', 'COOLING', 'BANNED', 'SOLD', 'ARCHIVED')),
    max_concurrency     integer NOT NULL CHECK (max_concurrency >= 1),
    -- The over-allocation guard, enforced by the database whatever runs at once.
    current_concurrency integer NOT NULL DEFAULT 0 CHECK (current_concurrency >= 0 AND current_concurrency <= max_concurrency),
    health_score        smallint NOT NULL CHECK (health_score BETWEEN 0 AND 100),
    cooldown_seconds    integer NOT NULL DEFAULT 0 CHECK (cooldown_seconds >= 0),
    cooldown_until      timestamptz,
    cost_per_lease      numeric NOT NULL DEFAULT 0,
    currency            text NOT NULL,
    version             integer NOT NULL DEFAULT 1 CHECK (version >= 1),
    created_at          timestamptz NOT NULL,
    updated_at          timestamptz NOT NULL
);
CREATE INDEX assets_leasable ON assets (tenant_id, sku_category, health_score DESC) WHERE status IN ('READY', 'IN_USE');
CREATE INDEX assets_cooling ON assets (cooldown_until) WHERE status = 'COOLING';
CREATE INDEX assets_tenant ON assets (tenant_id, created_at, asset_id);

CREATE FUNCTION creep_illegal_transition() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'illegal % transition % -> %', TG_ARGV[0], OLD.status, NEW.status
        USING ERRCODE = 'check_violation';
END
$$;
CREATE TRIGGER assets_transition_guard BEFORE UPDATE OF status ON assets FOR EACH ROW
WHEN (OLD.status <> NEW.status AND (OLD.status || '>' || NEW.status) NOT IN (
    'BANNED>ARCHIVED', 'BANNED>READY', 'COOLING>ARCHIVED', 'COOLING>BANNED', 'COOLING>READY',
    'COOLING>SOLD', 'IN_USE>ARCHIVED', 'IN_USE>BANNED', 'IN_USE>COOLING', 'IN_USE>READY',
    'IN_USE>SOLD', 'NEW>ARCHIVED', 'NEW>BANNED', 'NEW>READY', 'READY>ARCHIVED', 'READY>BANNED',
    'READY>COOLING', 'READY>IN_USE', 'READY>SOLD', 'SOLD>ARCHIVED'))
EXECUTE FUNCTION creep_illegal_transition('asset');

CREATE TABLE leases (
    lease_id    uuid PRIMARY KEY,
    tenant_id   text NOT NULL,
    task_id     uuid NOT NULL,
    asset_id    uuid NOT NULL REFERENCES assets (asset_id),
    status      text NOT NULL CHECK (status IN ('ACTIVE', 'RELEASED', 'EXPIRED', 'REVOKED')),
    acquired_at timestamptz NOT NULL,
    expires_at  timestamptz,
    released_at timestamptz,
    cost        numeric NOT NULL,
    currency    text NOT NULL,
    claim_token uuid NOT NULL,
    hint_index  integer NOT NULL
);
CREATE INDEX leases_task ON leases (task_id);
CREATE INDEX leases_asset_active ON leases (asset_id) WHERE status = 'ACTIVE';

CREATE TRIGGER leases_transition_guard BEFORE UPDATE OF status ON leases FOR EACH ROW
WHEN (OLD.status <> NEW.status AND (OLD.status || '>' || NEW.status) NOT IN (
    'ACTIVE>EXPIRED', 'ACTIVE>RELEASED', 'ACTIVE>REVOKED'))
EXECUTE FUNCTION creep_illegal_transition('lease');

CREATE FUNCTION creep_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% is append-only', TG_TABLE_NAME USING ERRCODE = 'insufficient_privilege';
END
$$;

CREATE TABLE ledger_entries (
    seq         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    entry_id    uuid NOT NULL UNIQUE,
    tenant_id   text NOT NULL,
    project_id  text,
    task_id     uuid,
    asset_id    uuid,
    lease_id    uuid,
    entry_type  text NOT NULL CHECK (entry_type IN ('COST', 'REVENUE', 'REFUND', 'TASK_BURN', 'ADJUSTMENT')),
    amount      numeric NOT NULL,
    currency    text NOT NULL,
    description text,
    occurred_at timestamptz NOT NULL,
    recorded_at timestamptz NOT NULL
);
CREATE INDEX ledger_task ON ledger_entries (task_id) WHERE task_id IS NOT NULL;
CREATE INDEX ledger_tenant_time ON ledger_entries (tenant_id, occurred_at);
CREATE TRIGGER ledger_entries_append_only BEFORE UPDATE OR DELETE ON ledger_entries
FOR EACH ROW EXECUTE FUNCTION creep_append_only();
CREATE TRIGGER ledger_entries_no_truncate BEFORE TRUNCATE ON ledger_entries
FOR EACH STATEMENT EXECUTE FUNCTION creep_append_only();

-- Few indexes, as events are written three per leased task: event_id (chains), asset and
-- correlation timelines. Events of a task share its correlation_id, so "by task" reads the
-- correlation index. seq orders events written in the same instant; it needs no index.
CREATE TABLE asset_events (
    seq             bigint GENERATED ALWAYS AS IDENTITY,
    event_id        uuid PRIMARY KEY,
    tenant_id       text NOT NULL,
    project_id      text,
    env             text,
    asset_id        uuid NOT NULL,
    task_id         uuid,
    lease_id        uuid,
    correlation_id  text,
    causation_id    uuid,
    event_type      text NOT NULL,
    source          text,
    severity        text CHECK (severity IN ('DEBUG', 'INFO', 'WARN', 'ERROR')),
    old_status      text,
    new_status      text,
    message         text,
    error_code      text,
    error_message   text,
    provider_status text,
    http_status     integer CHECK (http_status BETWEEN 100 AND 599),
    latency_ms      bigint CHECK (latency_ms >= 0),
    retryable       boolean,
    occurred_at     timestamptz NOT NULL,
    recorded_at     timestamptz NOT NULL,
    tags            jsonb NOT NULL DEFAULT '[]',
    context         jsonb NOT NULL DEFAULT '{}',
    version         integer NOT NULL DEFAULT 1 CHECK (version >= 1)
);
CREATE INDEX asset_events_asset ON asset_events (asset_id, occurred_at);
CREATE INDEX asset_events_correlation ON asset_events (correlation_id, occurred_at) WHERE correlation_id IS NOT NULL;
CREATE TRIGGER asset_events_append_only BEFORE UPDATE OR DELETE ON asset_events
FOR EACH ROW EXECUTE FUNCTION creep_append_only();
CREATE TRIGGER asset_events_no_truncate BEFORE TRUNCATE ON asset_events
FOR EACH STATEMENT EXECUTE FUNCTION creep_append_only();

CREATE TABLE asset_ban_policies (
    tenant_id           text NOT NULL,
    sku_category        text NOT NULL,
    max_failures        integer NOT NULL CHECK (max_failures >= 1),
    window_seconds      integer NOT NULL CHECK (window_seconds >= 1),
    failure_event_types jsonb NOT NULL DEFAULT '[]',
    updated_at          timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, sku_category)
);
