-- creep 0009: the transition guard fires AFTER the row is updated, with the same condition.
-- A BEFORE ROW trigger makes PostgreSQL fetch and lock each row before updating it (one more
-- heap lock and WAL record per completed task) even when its WHEN clause lets the row pass.
-- An AFTER trigger evaluates WHEN on the old and new rows it already has; an illegal
-- transition still raises, and the whole statement is rolled back as before.
DROP TRIGGER tasks_transition_guard ON tasks;
CREATE TRIGGER tasks_transition_guard AFTER UPDATE OF status ON tasks FOR EACH ROW
WHEN (OLD.status <> NEW.status
  AND NOT (OLD.status = 'QUEUED' AND NEW.status = 'RUNNING')
  AND NOT (OLD.status = 'RUNNING' AND NEW.status <> 'PENDING')
  AND (OLD.status || '>' || NEW.status) NOT IN (
    'CANCELLED>QUEUED', 'DEAD_LETTER>QUEUED', 'FAILED>QUEUED', 'PENDING>CANCELLED',
    'PENDING>QUEUED', 'QUEUED>CANCELLED', 'QUEUED>FAILED', 'QUEUED>RUNNING',
    'RUNNING>CANCELLED', 'RUNNING>DEAD_LETTER', 'RUNNING>FAILED', 'RUNNING>QUEUED',
    'RUNNING>SUCCESS', 'RUNNING>TIMEOUT', 'TIMEOUT>QUEUED'))
EXECUTE FUNCTION tasks_transition_guard();
