-- creep 0012: asset_events records the priority of the task behind an event (0 for events of
-- no task), as on SQLite, where the correlation index leads with it (SQLite migration 0011).
-- The correlation index here stays as it is: PostgreSQL's own write-ahead log is not the
-- bottleneck of a leased claim.
ALTER TABLE asset_events ADD COLUMN task_priority integer NOT NULL DEFAULT 0;
