-- creep 0002: TaskLock (seed 003): expiring, fenced holds for leadership.
CREATE TABLE task_locks (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    lock_key    TEXT NOT NULL UNIQUE,
    holder_id   TEXT NOT NULL,
    token       TEXT NOT NULL,
    state       TEXT NOT NULL CHECK (state IN ('active', 'released', 'expired')),
    acquired_at INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL,
    released_at INTEGER,
    purpose     TEXT,
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL
);
CREATE INDEX task_locks_state ON task_locks (state);
CREATE INDEX task_locks_expires ON task_locks (expires_at);
