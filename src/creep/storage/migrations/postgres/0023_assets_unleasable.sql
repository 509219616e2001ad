-- creep 0023 (/metrics): creep_assets counted every asset by status on every scrape, SOLD and
-- ARCHIVED ones included (history that only grows: a million assets cost a read of them all).
-- It now counts the assets in use or usable, each status through a partial index: READY and
-- IN_USE through assets_leasable, COOLING through assets_cooling, NEW and BANNED through this
-- one (a lease, READY <-> IN_USE <-> COOLING, never writes to it).
CREATE INDEX assets_unleasable ON assets (status) WHERE status IN ('NEW', 'BANNED');
