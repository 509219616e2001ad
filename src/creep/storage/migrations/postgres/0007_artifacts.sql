-- creep 0004: task artifacts (seed 004's task_assets): a task's input/output/preview/log files.
-- The bytes live on local disk under their sha256 (content-addressed, deduplicated); this
-- table is the index. `creep artifacts reconcile` checks the two against each other.
CREATE TABLE task_artifacts (
    artifact_id uuid PRIMARY KEY,
    task_id     uuid NOT NULL REFERENCES tasks (task_id) ON DELETE CASCADE,
    tenant_id   text NOT NULL,
    kind        text NOT NULL CHECK (kind IN ('input', 'output', 'preview', 'log')),
    file_name   text NOT NULL CHECK (length(file_name) BETWEEN 1 AND 255),
    mime_type   text NOT NULL,
    size_bytes  bigint NOT NULL CHECK (size_bytes >= 0),
    width       integer CHECK (width > 0),
    height      integer CHECK (height > 0),
    checksum    text NOT NULL CHECK (checksum ~ '^[0-9a-f]{64}$'),
    object_key  text NOT NULL,
    metadata    jsonb NOT NULL DEFAULT '{}',
    created_at  timestamptz NOT NULL
);
CREATE INDEX task_artifacts_task ON task_artifacts (task_id, created_at);
CREATE INDEX task_artifacts_checksum ON task_artifacts (checksum);
