-- creep 0010: the status-driven access paths move off tasks into task_queue, a narrow table
-- holding one row per PENDING, QUEUED or RUNNING task, so that updating a task (its claim,
-- its completion, a heartbeat) is a HOT update: no index of tasks names status (or
-- deadline_at), so a new row version goes on the same page with no index insert. Before,
-- every claim and completion inserted into all of tasks' indexes, the random-keyed
-- tasks_idempotency among them (the cost that grew with the history stored).
--
-- Triggers on tasks keep task_queue exactly in step with tasks, in the same statement, on
-- every path that inserts, updates or deletes tasks (claims, completions, retries, rescues,
-- cancels, promotions, API patches, raw SQL). They only ever touch task_queue rows of tasks
-- rows the statement itself holds locked, so task_queue rows are never contended: the claim
-- reads task_queue and locks the tasks rows (FOR UPDATE OF t SKIP LOCKED), the same lock
-- order as every other writer.
-- No write to tasks may land between the copy below and the triggers that follow it (a
-- rolling deploy migrates while workers and servers keep writing): hold tasks exclusively
-- from the start, as the DROP INDEXes below would anyway.
LOCK TABLE tasks IN ACCESS EXCLUSIVE MODE;

CREATE TABLE task_queue (
    task_id     uuid PRIMARY KEY,
    status      text NOT NULL,
    tenant_id   text NOT NULL,
    task_type   text NOT NULL,
    priority    smallint NOT NULL,
    created_at  timestamptz NOT NULL,
    run_after   timestamptz NOT NULL,
    has_hints   boolean NOT NULL,
    deadline_at timestamptz
);
INSERT INTO task_queue
SELECT task_id, status, tenant_id, task_type, priority, created_at, run_after, has_hints,
    deadline_at
FROM tasks WHERE status IN ('PENDING', 'QUEUED', 'RUNNING');

-- Room on every page for one more version of each of its rows: a claim batch takes the rows
-- of whole pages at once (equal priorities, FIFO), and a HOT update needs its new version on
-- the same page; the old ones are pruned once the claim commits, making room for the
-- completion's versions. At 80 (as before) only ~30% of FIFO claims found room (measured:
-- bench/pg_drain_stats.py --priorities 1); at 50, 96%. Affects pages filled from now on.
ALTER TABLE tasks SET (fillfactor = 50);

DROP INDEX tasks_runnable_plain;
DROP INDEX tasks_runnable_hinted;
DROP INDEX tasks_pending;
DROP INDEX tasks_running;
DROP INDEX tasks_tenant_active;
CREATE INDEX task_queue_runnable_plain ON task_queue (priority DESC, created_at)
    WHERE status = 'QUEUED' AND has_hints = false;
CREATE INDEX task_queue_runnable_hinted ON task_queue (priority DESC, created_at)
    WHERE status = 'QUEUED' AND has_hints = true;
CREATE INDEX task_queue_pending ON task_queue (run_after) WHERE status = 'PENDING';
-- One index for the RUNNING tasks (the rescuer reads them all: it tests claim_expires_at as
-- well as the deadline) and for a tenant's QUEUED + RUNNING count (its quota): a claim's
-- non-HOT update of task_queue then inserts into two indexes (this one and the primary key)
-- instead of three (callgrind: 427k -> 415k instructions of backend per claimed+completed task).
CREATE INDEX task_queue_active ON task_queue (status, tenant_id)
    WHERE status IN ('QUEUED', 'RUNNING');

-- Statement-level triggers with transition tables: one pass per statement, not per row (a
-- claim or a completion batch is one statement of hundreds of rows). Each statement probes
-- task_queue by primary key per changed row; hash and merge joins (which would read all of
-- task_queue to meet a batch) and sequential scans are ruled out inside them.
CREATE FUNCTION task_queue_on_insert() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO task_queue
    SELECT task_id, status, tenant_id, task_type, priority, created_at, run_after, has_hints,
        deadline_at
    FROM new_rows WHERE status IN ('PENDING', 'QUEUED', 'RUNNING');
    RETURN NULL;
END
$$;

-- Compared against task_queue itself (not the old rows): what ends up in task_queue is
-- exactly the active part of the new rows, whatever it held before.
CREATE FUNCTION task_queue_on_update() RETURNS trigger LANGUAGE plpgsql
SET enable_seqscan = off SET enable_hashjoin = off SET enable_mergejoin = off AS $$
BEGIN
    DELETE FROM task_queue q USING new_rows n
    WHERE q.task_id = n.task_id AND n.status NOT IN ('PENDING', 'QUEUED', 'RUNNING');
    UPDATE task_queue q SET status = n.status, tenant_id = n.tenant_id,
        task_type = n.task_type, priority = n.priority, created_at = n.created_at,
        run_after = n.run_after, has_hints = n.has_hints, deadline_at = n.deadline_at
    FROM new_rows n
    WHERE q.task_id = n.task_id AND n.status IN ('PENDING', 'QUEUED', 'RUNNING')
      AND (q.status, q.tenant_id, q.task_type, q.priority, q.created_at, q.run_after,
           q.has_hints, q.deadline_at)
          IS DISTINCT FROM (n.status, n.tenant_id, n.task_type, n.priority, n.created_at,
                            n.run_after, n.has_hints, n.deadline_at);
    INSERT INTO task_queue
    SELECT task_id, status, tenant_id, task_type, priority, created_at, run_after, has_hints,
        deadline_at
    FROM new_rows n WHERE n.status IN ('PENDING', 'QUEUED', 'RUNNING')
      AND NOT EXISTS (SELECT 1 FROM task_queue q WHERE q.task_id = n.task_id);
    RETURN NULL;
END
$$;

CREATE FUNCTION task_queue_on_delete() RETURNS trigger LANGUAGE plpgsql
SET enable_seqscan = off SET enable_hashjoin = off SET enable_mergejoin = off AS $$
BEGIN
    DELETE FROM task_queue q USING old_rows o WHERE q.task_id = o.task_id;
    RETURN NULL;
END
$$;

CREATE FUNCTION task_queue_on_truncate() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    TRUNCATE task_queue;
    RETURN NULL;
END
$$;

CREATE TRIGGER task_queue_insert AFTER INSERT ON tasks REFERENCING NEW TABLE AS new_rows
FOR EACH STATEMENT EXECUTE FUNCTION task_queue_on_insert();
CREATE TRIGGER task_queue_update AFTER UPDATE ON tasks REFERENCING NEW TABLE AS new_rows
FOR EACH STATEMENT EXECUTE FUNCTION task_queue_on_update();
CREATE TRIGGER task_queue_delete AFTER DELETE ON tasks REFERENCING OLD TABLE AS old_rows
FOR EACH STATEMENT EXECUTE FUNCTION task_queue_on_delete();
CREATE TRIGGER task_queue_truncate AFTER TRUNCATE ON tasks
FOR EACH STATEMENT EXECUTE FUNCTION task_queue_on_truncate();
