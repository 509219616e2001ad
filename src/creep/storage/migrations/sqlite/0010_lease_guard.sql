-- creep 0010: a cheaper lease transition guard. Every leased task's completion moves its
-- lease ACTIVE -> RELEASED, and the IN list of the old guard made SQLite build a lookup
-- table on every trigger run (~5 us per lease). The legal transitions are exactly "out of
-- ACTIVE into any other status" (the CHECK constraint bounds the new status), so the guard
-- says that with two comparisons.
DROP TRIGGER leases_transition_guard;
CREATE TRIGGER leases_transition_guard BEFORE UPDATE OF status ON leases
WHEN OLD.status <> NEW.status AND OLD.status <> 'ACTIVE'
BEGIN
    SELECT RAISE(ABORT, 'illegal lease transition');
END;
