-- creep 0019 (/metrics): the ledger gauges as a rollup. A scrape summed every ledger entry
-- ever written (append-only, never purged), so it got slower forever; now it folds the entries
-- past the `ledger_entries` cursor (seq, the primary key: SQLite's single writer commits them
-- in order) into these totals and moves the cursor in the same transaction. Amounts are exact
-- decimal text, as in ledger_entries. Filled by the first scrape after the upgrade.
CREATE TABLE metric_ledger (
    entry_type TEXT NOT NULL,
    currency   TEXT NOT NULL,
    amount     TEXT NOT NULL,
    entries    INTEGER NOT NULL,
    PRIMARY KEY (entry_type, currency)
);
INSERT INTO metric_cursors (name, cursor) VALUES ('ledger_entries', NULL);
