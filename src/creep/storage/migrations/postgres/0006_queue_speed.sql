-- creep 0003: the transition guard decides the two hot paths (a claim QUEUED>RUNNING and any
-- completion out of RUNNING) by plain comparisons before the full list of legal transitions,
-- which stays the one place the database spells the table out.
DROP TRIGGER tasks_transition_guard ON tasks;
CREATE TRIGGER tasks_transition_guard BEFORE UPDATE OF status ON tasks FOR EACH ROW
WHEN (OLD.status <> NEW.status
  AND NOT (OLD.status = 'QUEUED' AND NEW.status = 'RUNNING')
  AND NOT (OLD.status = 'RUNNING' AND NEW.status <> 'PENDING')
  AND (OLD.status || '>' || NEW.status) NOT IN (
    'CANCELLED>QUEUED', 'DEAD_LETTER>QUEUED', 'FAILED>QUEUED', 'PENDING>CANCELLED',
    'PENDING>QUEUED', 'QUEUED>CANCELLED', 'QUEUED>FAILED', 'QUEUED>RUNNING',
    'RUNNING>CANCELLED', 'RUNNING>DEAD_LETTER', 'RUNNING>FAILED', 'RUNNING>QUEUED',
    'RUNNING>SUCCESS', 'RUNNING>TIMEOUT', 'TIMEOUT>QUEUED'))
EXECUTE FUNCTION tasks_transition_guard();
