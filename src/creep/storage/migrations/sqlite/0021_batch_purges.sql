-- creep 0021 (task retention): the batches task retention is deleting. A batch's tasks went in
-- one transaction, so a finished batch of a million tasks held the writer for minutes. A batch
-- of more tasks than a sweep deletes per transaction is marked here (and its `batches` row
-- deleted) in one transaction, then its tasks go in transactions of that size; a sweep that
-- stopped resumes from the mark, and a retry of a task of a marked batch is refused.
CREATE TABLE batch_purges (
    batch_id  TEXT PRIMARY KEY,
    cutoff    INTEGER NOT NULL  -- the cutoff it was judged by
);
