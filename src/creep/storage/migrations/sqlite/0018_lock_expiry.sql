-- creep 0018: TaskLock (seed 003, 验证规则): `expires_at` > `acquired_at`, checked by the table.
-- A TTL of zero or less (the Python API took one before) wrote a lock that expired when it
-- was taken, or before. Such a row is kept and fixed, not refused: it had lapsed at once, and
-- still has: its expires_at becomes acquired_at + 1 microsecond and, if it was still
-- `active`, its state `expired` (as the next sweep would have marked it). SQLite cannot add a
-- CHECK constraint, so the table is rebuilt with its rows (ids kept), indexes and trigger.

CREATE TABLE task_locks_new (
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
    updated_at  INTEGER NOT NULL,
    CONSTRAINT task_locks_expiry CHECK (expires_at > acquired_at)
);
INSERT INTO task_locks_new (id, lock_key, holder_id, token, state, acquired_at, expires_at,
                            released_at, purpose, created_at, updated_at)
SELECT id, lock_key, holder_id, token,
       CASE WHEN expires_at <= acquired_at AND state = 'active' THEN 'expired' ELSE state END,
       acquired_at,
       CASE WHEN expires_at <= acquired_at THEN acquired_at + 1 ELSE expires_at END,
       released_at, purpose, created_at, updated_at
FROM task_locks;
DROP TABLE task_locks;
ALTER TABLE task_locks_new RENAME TO task_locks;
CREATE INDEX task_locks_state ON task_locks (state);
CREATE INDEX task_locks_expires ON task_locks (expires_at);
CREATE INDEX task_locks_updated ON task_locks (updated_at) WHERE state <> 'active';

-- TaskLock transitions (domain/lock.py): a live lock cannot be taken over (as in 0003).
CREATE TRIGGER task_locks_transition_guard BEFORE UPDATE ON task_locks
WHEN NOT (
    (OLD.state = 'active' AND NEW.state IN ('released', 'expired'))
    OR (OLD.state IN ('released', 'expired') AND NEW.state = 'active')
    OR (OLD.state = 'active' AND NEW.state = 'active'
        AND (NEW.token = OLD.token OR OLD.expires_at < NEW.acquired_at)))
BEGIN
    SELECT RAISE(ABORT, 'illegal lock transition');
END;
