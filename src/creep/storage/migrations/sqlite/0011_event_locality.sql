-- creep 0011: asset events' correlation index leads with the task's priority (as
-- task_events' by-task index does since 0009). A leased task writes three events (ALLOCATED,
-- TASK_SUCCESS, RELEASED) under its correlation_id, by default its own task id: keyed by it
-- alone, one claim batch of mixed submission order put its entries on one index page per
-- task, and every claim and completion commit rewrote most of the index into the WAL. A
-- batch is claimed by priority, so with the priority first its entries sit side by side.
-- Events of no task record 0. Reads by correlation name all 101 priorities
-- (task_priority IN (0, ..., 100) AND correlation_id = ?): a seek per priority, and a
-- priority changed by an update still finds every event.
ALTER TABLE asset_events ADD COLUMN task_priority INTEGER NOT NULL DEFAULT 0;
DROP INDEX asset_events_correlation;
CREATE INDEX asset_events_correlation ON asset_events (task_priority, correlation_id, occurred_at) WHERE correlation_id IS NOT NULL;
