-- creep 0015: a hinted task's NO_RESOURCE instant counts from when it became runnable, not
-- from when it was queued. A retry queues the task at once with run_after = now + backoff: a
-- backoff longer than timeout_ms failed it NO_RESOURCE before it could run, with its assets
-- free all along. The instant is now GREATEST(queued_at, run_after) + timeout_ms; the
-- triggers are those of 0014 with that expression.
LOCK TABLE tasks IN SHARE ROW EXCLUSIVE MODE;

UPDATE task_queue q
SET no_resource_at = GREATEST(t.queued_at, t.run_after) + t.timeout_ms * interval '1 millisecond'
FROM tasks t WHERE t.task_id = q.task_id AND q.status = 'QUEUED' AND q.has_hints;

CREATE OR REPLACE FUNCTION task_queue_on_insert() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO task_queue
    SELECT task_id, status, tenant_id, task_type, priority, created_at, run_after, has_hints,
        deadline_at,
        CASE WHEN status = 'QUEUED' AND has_hints
             THEN GREATEST(queued_at, run_after) + timeout_ms * interval '1 millisecond' END
    FROM new_rows WHERE status IN ('PENDING', 'QUEUED', 'RUNNING');
    RETURN NULL;
END
$$;

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
        run_after = n.run_after, has_hints = n.has_hints, deadline_at = n.deadline_at,
        no_resource_at = CASE WHEN n.status = 'QUEUED' AND n.has_hints
                              THEN GREATEST(n.queued_at, n.run_after) + n.timeout_ms * interval '1 millisecond' END
    FROM new_rows n
    WHERE q.task_id = n.task_id AND n.status IN ('PENDING', 'QUEUED', 'RUNNING')
      AND (q.status, q.tenant_id, q.task_type, q.priority, q.created_at, q.run_after,
           q.has_hints, q.deadline_at, q.no_resource_at)
          IS DISTINCT FROM (n.status, n.tenant_id, n.task_type, n.priority, n.created_at,
                            n.run_after, n.has_hints, n.deadline_at,
                            CASE WHEN n.status = 'QUEUED' AND n.has_hints
                                 THEN GREATEST(n.queued_at, n.run_after) + n.timeout_ms * interval '1 millisecond'
                            END);
    GET DIAGNOSTICS updated = ROW_COUNT;
    IF updated < active THEN
        INSERT INTO task_queue
        SELECT task_id, status, tenant_id, task_type, priority, created_at, run_after,
            has_hints, deadline_at,
            CASE WHEN status = 'QUEUED' AND has_hints
                 THEN GREATEST(queued_at, run_after) + timeout_ms * interval '1 millisecond' END
        FROM new_rows n WHERE n.status IN ('PENDING', 'QUEUED', 'RUNNING')
          AND NOT EXISTS (SELECT 1 FROM task_queue q WHERE q.task_id = n.task_id);
    END IF;
    RETURN NULL;
END
$$;

-- CREATE OR REPLACE dropped the search_path pinned by 0011: pin it again, the same way.
DO $$
BEGIN
    EXECUTE format('ALTER FUNCTION task_queue_on_insert() SET search_path = %I, pg_temp',
                   current_schema());
    EXECUTE format('ALTER FUNCTION task_queue_on_update() SET search_path = %I, pg_temp',
                   current_schema());
END
$$;
