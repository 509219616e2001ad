-- creep 0004: task artifacts (seed 004's task_assets): a task's input/output/preview/log files.
-- The bytes live on local disk under their sha256 (content-addressed, deduplicated); this
-- table is the index. `creep artifacts reconcile` checks the two against each other.
CREATE TABLE task_artifacts (
    artifact_id TEXT PRIMARY KEY,
    task_id     TEXT NOT NULL REFERENCES tasks (task_id) ON DELETE CASCADE,
    tenant_id   TEXT NOT NULL,
    kind        TEXT NOT NULL CHECK (kind IN ('input', 'output', 'preview', 'log')),
    file_name   TEXT NOT NULL CHECK (length(file_name) BETWEEN 1 AND 255),
    mime_type   TEXT NOT NULL,
    size_bytes  INTEGER NOT NULL CHECK (size_bytes >= 0),
    width       INTEGER CHECK (width > 0),
    height      INTEGER CHECK (height > 0),
    checksum    TEXT NOT NULL CHECK (length(checksum) = 64),
    object_key  TEXT NOT NULL,
    metadata    TEXT NOT NULL DEFAULT '{}',
    created_at  INTEGER NOT NULL
);
CREATE INDEX task_artifacts_task ON task_artifacts (task_id, created_at);
CREATE INDEX task_artifacts_checksum ON task_artifacts (checksum);
