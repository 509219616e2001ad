-- creep 0009: task_events' by-task index leads with the task's priority.
-- A claim takes a batch of the highest priority first, and with the index keyed by task id
-- alone the 'started' and 'succeeded' events of one batch of mixed submission order landed
-- on one index page per task (the biggest share of what a claim or completion commit
-- wrote to the WAL). Claims and completions now record the task's priority with the event
-- (0 for every other event), so one batch's entries sit side by side. Reads of one task's
-- events name all 101 priorities (task_priority IN (0, ..., 100) AND task_id = ?): a
-- seek per priority, and a priority changed by an update still finds every event.
ALTER TABLE task_events ADD COLUMN task_priority INTEGER NOT NULL DEFAULT 0;
DROP INDEX task_events_task;
CREATE INDEX task_events_task ON task_events (task_priority, task_id, event_id);
