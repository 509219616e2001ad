-- creep 0013: the task_queue update trigger runs only the statements a change needs. It
-- counts the active rows among the changed tasks (one pass over the transition table, no
-- index probe), then: the DELETE only when some row left the active statuses, the UPDATE
-- only when some row is active, and the INSERT only when the UPDATE did not account for
-- every active row. A claim (all rows QUEUED -> RUNNING, each changing its task_queue row)
-- no longer probes task_queue a second time per row for the INSERT's NOT EXISTS, and a
-- completion (all rows leaving) skips two passes over its rows. What ends up in task_queue
-- is as before: exactly the active part of the new rows. The UPDATE touches each active
-- row's task_queue row at most once (new_rows holds each task once), so when it counts
-- as many rows as are active, each has its task_queue row and the INSERT would add none;
-- otherwise the INSERT runs, guarded as before.
CREATE OR REPLACE FUNCTION task_queue_on_update() RETURNS trigger LANGUAGE plpgsql
SET enable_seqscan = off SET enable_hashjoin = off SET enable_mergejoin = off AS $$
DECLARE
    active bigint;
    total bigint;
    updated bigint;
BEGIN
    SELECT count(*) FILTER (WHERE status IN ('PENDING', 'QUEUED', 'RUNNING')), count(*)
    INTO active, total FROM new_rows;
    IF active < total THEN
        DELETE FROM task_queue q USING new_rows n
        WHERE q.task_id = n.task_id AND n.status NOT IN ('PENDING', 'QUEUED', 'RUNNING');
    END IF;
    IF active = 0 THEN
        RETURN NULL;
    END IF;
    UPDATE task_queue q SET status = n.status, tenant_id = n.tenant_id,
        task_type = n.task_type, priority = n.priority, created_at = n.created_at,
        run_after = n.run_after, has_hints = n.has_hints, deadline_at = n.deadline_at
    FROM new_rows n
    WHERE q.task_id = n.task_id AND n.status IN ('PENDING', 'QUEUED', 'RUNNING')
      AND (q.status, q.tenant_id, q.task_type, q.priority, q.created_at, q.run_after,
           q.has_hints, q.deadline_at)
          IS DISTINCT FROM (n.status, n.tenant_id, n.task_type, n.priority, n.created_at,
                            n.run_after, n.has_hints, n.deadline_at);
    GET DIAGNOSTICS updated = ROW_COUNT;
    IF updated < active THEN
        INSERT INTO task_queue
        SELECT task_id, status, tenant_id, task_type, priority, created_at, run_after,
            has_hints, deadline_at
        FROM new_rows n WHERE n.status IN ('PENDING', 'QUEUED', 'RUNNING')
          AND NOT EXISTS (SELECT 1 FROM task_queue q WHERE q.task_id = n.task_id);
    END IF;
    RETURN NULL;
END
$$;

-- CREATE OR REPLACE dropped the search_path pinned by 0011: pin it again, the same way.
DO $$
BEGIN
    EXECUTE format('ALTER FUNCTION task_queue_on_update() SET search_path = %I, pg_temp',
                   current_schema());
END
$$;
