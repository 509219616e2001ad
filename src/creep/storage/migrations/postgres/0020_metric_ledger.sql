-- creep 0020 (/metrics): the ledger gauges as a rollup. A scrape summed every ledger entry
-- ever written (append-only, never purged), so it got slower forever; now it folds the entries
-- past the `ledger_entries` cursor into these totals and moves the cursor in the same
-- transaction. seq values can commit out of order, so the cursor also keeps the seqs below it
-- that were not yet visible, until every transaction that could still commit one has ended
-- (storage/metrics_store.py). Filled by the first scrape after the upgrade.
CREATE TABLE metric_ledger (
    entry_type text NOT NULL,
    currency   text NOT NULL,
    amount     numeric NOT NULL,
    entries    bigint NOT NULL,
    PRIMARY KEY (entry_type, currency)
);
INSERT INTO metric_cursors (name, cursor) VALUES ('ledger_entries', NULL);
