-- creep 0014: the append-only tables refuse INSERT OR REPLACE too. REPLACE deletes the row
-- whose key the new one takes, and SQLite runs no DELETE trigger for that delete (unless a
-- connection turns recursive_triggers on): a ledger entry, an asset event or a young audit
-- row could be rewritten through it. An insert that would take an existing row's seq or id
-- is refused before REPLACE gets to delete anything; a new row (seq left to SQLite, a fresh
-- id) costs one probe of the id's unique index, at its newest end.
CREATE TRIGGER ledger_entries_no_replace BEFORE INSERT ON ledger_entries
WHEN EXISTS (SELECT 1 FROM ledger_entries WHERE entry_id = NEW.entry_id)
  OR (NEW.seq > 0 AND EXISTS (SELECT 1 FROM ledger_entries WHERE seq = NEW.seq))
BEGIN
    SELECT RAISE(ABORT, 'ledger_entries is append-only');
END;

CREATE TRIGGER asset_events_no_replace BEFORE INSERT ON asset_events
WHEN EXISTS (SELECT 1 FROM asset_events WHERE event_id = NEW.event_id)
  OR (NEW.seq > 0 AND EXISTS (SELECT 1 FROM asset_events WHERE seq = NEW.seq))
BEGIN
    SELECT RAISE(ABORT, 'asset_events is append-only');
END;

CREATE TRIGGER audit_events_no_replace BEFORE INSERT ON audit_events
WHEN EXISTS (SELECT 1 FROM audit_events WHERE id = NEW.id)
  OR (NEW.seq > 0 AND EXISTS (SELECT 1 FROM audit_events WHERE seq = NEW.seq))
BEGIN
    SELECT RAISE(ABORT, 'audit_events is immutable');
END;
