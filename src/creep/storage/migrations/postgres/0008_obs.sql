-- creep 0008 (/metrics): the task-lifecycle rollup. Whichever API node is scraped folds the
-- task events written since `cursor` into `metric_values` (counters and histogram buckets)
-- and moves the cursor, in one transaction: every node reports the same cluster-wide totals
-- and no event is counted twice.
CREATE TABLE metric_cursors (
    name   text PRIMARY KEY,
    cursor text
);
INSERT INTO metric_cursors (name, cursor) VALUES ('task_events', NULL);

CREATE TABLE metric_values (
    name   text NOT NULL,
    labels text NOT NULL,
    value  double precision NOT NULL,
    PRIMARY KEY (name, labels)
);
