-- creep 0023 (HTTP worker protocol): the claim_ids that claimed tasks, each written in the
-- transaction of its claim. A claim sent again while its first send was still on the server
-- (a long poll, an open transaction) found nothing claimed yet and claimed a second batch
-- under the same claim_id, which nobody read. One claim_id (of one worker_id and tenant;
-- tenant_id '' for an admin key) now claims once: a send that finds its row answers the
-- tasks of that claim instead. Rows older than an hour (MAX_CLAIM_TTL) are pruned by the
-- claims that write new ones.
CREATE TABLE worker_claims (
    claim_id   TEXT NOT NULL,
    worker_id  TEXT NOT NULL,
    tenant_id  TEXT NOT NULL,
    claimed_at INTEGER NOT NULL,
    PRIMARY KEY (claim_id, worker_id, tenant_id)
);
CREATE INDEX worker_claims_claimed_at ON worker_claims (claimed_at);
