-- creep 0019: TaskLock (seed 003, 验证规则): `expires_at` > `acquired_at`, checked by the table.
-- A TTL of zero or less (the Python API took one before) wrote a lock that expired when it
-- was taken, or before. Such a row is kept and fixed, not refused: it had lapsed at once, and
-- still has: its expires_at becomes acquired_at + 1 microsecond and, if it was still
-- `active`, its state `expired` (as the next sweep would have marked it). The transition
-- guard (0003) refuses released -> released and expired -> expired, so it is off for this
-- one fix-up, inside the migration's transaction.
ALTER TABLE task_locks DISABLE TRIGGER task_locks_transition_guard;
UPDATE task_locks
SET expires_at = acquired_at + interval '1 microsecond',
    state = CASE WHEN state = 'active' THEN 'expired' ELSE state END
WHERE expires_at <= acquired_at;
ALTER TABLE task_locks ENABLE TRIGGER task_locks_transition_guard;
ALTER TABLE task_locks ADD CONSTRAINT task_locks_expiry CHECK (expires_at > acquired_at);
