-- creep 0013: leases' and ledger entries' by-task indexes lead with the task's priority (as
-- task_events' since 0009 and asset_events' correlation index since 0011). A claim batch
-- takes tasks of a few priorities in submission order, their ids spread over the whole id
-- range: keyed by task id alone, a batch's leases and COST entries went to nearly every page
-- of both indexes, and each claim commit wrote those pages to the WAL again (the leased
-- drain bench: 0.49 of its 2.17 WAL pages per task). With the priority first, one batch's
-- entries sit side by side. Rows written before this record 0, as do entries of no task.
-- Reads by task name all 101 priorities (task_priority IN (0, ..., 100) AND task_id = ?): a
-- seek per priority, and a priority changed by an update still finds every row.
ALTER TABLE leases ADD COLUMN task_priority INTEGER NOT NULL DEFAULT 0;
DROP INDEX leases_task;
CREATE INDEX leases_task ON leases (task_priority, task_id);
ALTER TABLE ledger_entries ADD COLUMN task_priority INTEGER NOT NULL DEFAULT 0;
DROP INDEX ledger_task;
CREATE INDEX ledger_task ON ledger_entries (task_priority, task_id) WHERE task_id IS NOT NULL;
