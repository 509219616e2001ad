-- creep 0022 (task retention): the batches task retention is deleting. A batch's tasks went in
-- one transaction, so a finished batch of a million tasks held its row locks and wrote its WAL
-- for minutes. A batch of more tasks than a sweep deletes per transaction is marked here (and
-- its `batches` row deleted) in one transaction, then its tasks go in transactions of that
-- size; a sweep that stopped resumes from the mark, and a retry of a task of a marked batch is
-- refused (the sweep and a retry of the batch's tasks meet on an advisory lock of the batch).
CREATE TABLE batch_purges (
    batch_id  text PRIMARY KEY,
    cutoff    timestamptz NOT NULL  -- the cutoff it was judged by
);
