-- creep 0002: TaskLock (seed 003): expiring, fenced holds for leadership.
CREATE TABLE task_locks (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    lock_key    text NOT NULL UNIQUE,
    holder_id   text NOT NULL,
    token       text NOT NULL,
    state       text NOT NULL CHECK (state IN ('active', 'released', 'expired')),
    acquired_at timestamptz NOT NULL,
    expires_at  timestamptz NOT NULL,
    released_at timestamptz,
    purpose     text,
    created_at  timestamptz NOT NULL,
    updated_at  timestamptz NOT NULL
);
CREATE INDEX task_locks_state ON task_locks (state);
CREATE INDEX task_locks_expires ON task_locks (expires_at);
