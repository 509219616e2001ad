"""PostgreSQL half of task artifacts and of the HTTP worker protocol (a mixin of PostgresStore)."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager
from datetime import datetime
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg.types.json import Jsonb

from creep.domain.artifacts import ARTIFACT_ADDED, Artifact, ArtifactKind
from creep.domain.errors import NotFound, TaskDeleted
from creep.domain.events import TaskEvent
from creep.domain.ids import is_uuid
from creep.ports import ClaimedTask
from creep.storage.common import CLAIM_IDS_KEPT, CLAIM_IDS_PRUNED, TASK_SELECT, ClaimedBefore

_ARTIFACT_COLUMNS = (
    "artifact_id, task_id, tenant_id, kind, file_name, mime_type, size_bytes, width, height, "
    "checksum, object_key, metadata, created_at"
)
_EVENT_COLUMNS = (
    "task_id, tenant_id, event_type, from_status, to_status, attempt, payload, created_at"
)

#: The claim_id of a claim that claimed, written in its transaction (no row back: a send of
#: it claimed before), with a few rows past CLAIM_IDS_KEPT pruned (rows another claim is
#: pruning are skipped, not waited for).
_RECORD_CLAIM_ID = """WITH pruned AS (
    DELETE FROM worker_claims WHERE ctid = ANY(ARRAY(
        SELECT ctid FROM worker_claims WHERE claimed_at < %(old)s
        LIMIT %(n)s FOR UPDATE SKIP LOCKED))
)
INSERT INTO worker_claims (claim_id, worker_id, tenant_id, claimed_at)
VALUES (%(id)s, %(w)s, %(t)s, %(now)s) ON CONFLICT DO NOTHING RETURNING 1"""


def _row_to_artifact(r: Sequence[Any]) -> Artifact:
    return Artifact(
        artifact_id=r[0], task_id=r[1], tenant_id=r[2], kind=ArtifactKind(r[3]), file_name=r[4],
        mime_type=r[5], size_bytes=r[6], width=r[7], height=r[8], checksum=r[9],
        object_key=r[10], metadata=r[11], created_at=r[12],
    )


class PostgresArtifactsMixin:
    if TYPE_CHECKING:
        def _tx(self) -> AbstractContextManager[psycopg.Connection[Any]]: ...

    # -- artifacts -----------------------------------------------------------------------------

    def artifact_create(self, artifact: Artifact) -> Artifact:
        if not is_uuid(artifact.task_id):
            raise NotFound("task", artifact.task_id)
        with self._tx() as conn:
            # FOR KEY SHARE (what the foreign key takes anyway; workers' updates of the task
            # do not wait on it) orders the insert with a delete of the task, which locks it
            # FOR UPDATE: a delete that commits first is seen here (the row is read again
            # once it is unlocked), one that comes after waits for the artifact.
            row = conn.execute(
                f"""INSERT INTO task_artifacts ({_ARTIFACT_COLUMNS})
                SELECT %s, task_id, tenant_id, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s
                FROM tasks WHERE task_id = %s AND tenant_id = %s AND deleted_at IS NULL
                FOR KEY SHARE
                RETURNING artifact_id""",
                (artifact.artifact_id, artifact.kind.value, artifact.file_name,
                 artifact.mime_type, artifact.size_bytes, artifact.width, artifact.height,
                 artifact.checksum, artifact.object_key, Jsonb(artifact.metadata),
                 artifact.created_at, artifact.task_id, artifact.tenant_id),
            ).fetchone()
            if row is None:
                deleted = conn.execute(
                    "SELECT 1 FROM tasks WHERE task_id = %s AND tenant_id = %s "
                    "AND deleted_at IS NOT NULL", (artifact.task_id, artifact.tenant_id),
                ).fetchone()
                if deleted is not None:
                    raise TaskDeleted(artifact.task_id, ARTIFACT_ADDED)
                raise NotFound("task", artifact.task_id)
        return artifact

    def artifact_get(self, artifact_id: str, tenant_id: str | None = None) -> Artifact:
        if not is_uuid(artifact_id):
            raise NotFound("artifact", artifact_id)
        with self._tx() as conn:
            row = conn.execute(
                f"SELECT {_ARTIFACT_COLUMNS} FROM task_artifacts WHERE artifact_id = %s",
                (artifact_id,),
            ).fetchone()
        if row is None or (tenant_id is not None and row[2] != tenant_id):
            raise NotFound("artifact", artifact_id)
        return _row_to_artifact(row)

    def artifact_list(
        self, task_id: str, tenant_id: str | None = None, kind: str | None = None
    ) -> list[Artifact]:
        if not is_uuid(task_id):
            raise NotFound("task", task_id)
        with self._tx() as conn:
            owner = conn.execute(
                "SELECT tenant_id FROM tasks WHERE task_id = %s", (task_id,)
            ).fetchone()
            if owner is None or (tenant_id is not None and owner[0] != tenant_id):
                raise NotFound("task", task_id)
            sql = f"SELECT {_ARTIFACT_COLUMNS} FROM task_artifacts WHERE task_id = %s"
            params: list[Any] = [task_id]
            if kind is not None:
                sql += " AND kind = %s"
                params.append(kind)
            rows = conn.execute(sql + " ORDER BY created_at, artifact_id", params).fetchall()
        return [_row_to_artifact(r) for r in rows]

    def artifact_scan(self, after: str | None = None, limit: int = 1000) -> list[Artifact]:
        """Every artifact row in artifact_id order, a page at a time (for reconcile)."""
        with self._tx() as conn:
            rows = conn.execute(
                f"SELECT {_ARTIFACT_COLUMNS} FROM task_artifacts "
                "WHERE artifact_id > %s::uuid ORDER BY artifact_id LIMIT %s",
                (after or "00000000-0000-0000-0000-000000000000", limit),
            ).fetchall()
        return [_row_to_artifact(r) for r in rows]

    def artifact_remove(
        self, artifact_ids: Sequence[str], reason: str, now: datetime
    ) -> list[Artifact]:
        """Drop index rows whose content is gone; each leaves an `artifact_removed` task event."""
        ids = [i for i in artifact_ids if is_uuid(i)]
        if not ids:
            return []
        with self._tx() as conn:
            # Their tasks' row locks first, as every writer of a task's events takes it
            # before drawing the event's id (PostgresStore.task_events).
            conn.execute(
                "SELECT 1 FROM tasks WHERE task_id IN (SELECT task_id FROM task_artifacts "
                "WHERE artifact_id = ANY(%s::uuid[])) ORDER BY task_id FOR NO KEY UPDATE",
                (ids,),
            )
            rows = conn.execute(
                f"""WITH gone AS (
                    DELETE FROM task_artifacts WHERE artifact_id = ANY(%(ids)s::uuid[])
                    RETURNING {_ARTIFACT_COLUMNS}
                ), ev AS (
                    INSERT INTO task_events ({_EVENT_COLUMNS})
                    SELECT t.task_id, t.tenant_id, 'artifact_removed', t.status, t.status,
                        t.attempt, jsonb_build_object('artifact_id', g.artifact_id,
                        'file_name', g.file_name, 'kind', g.kind, 'checksum', g.checksum,
                        'reason', %(reason)s::text), %(now)s
                    FROM gone g JOIN tasks t ON t.task_id = g.task_id
                )
                SELECT * FROM gone ORDER BY artifact_id""",
                {"ids": ids, "reason": reason, "now": now},
            ).fetchall()
        return [_row_to_artifact(r) for r in rows]

    # -- HTTP worker protocol ------------------------------------------------------------------

    def task_claim_scoped(
        self, worker_id: str, task_types: Sequence[str], limit: int, now: datetime,
        claim_ttl: float, tenant_id: str, claim_token: str | None = None,
    ) -> list[ClaimedTask]:
        """task_claim restricted to one tenant's tasks (a tenant key's worker): the same claim
        (leases for hinted tasks included) with a tenant filter."""
        if limit <= 0 or not task_types:
            return []
        with self._tx() as conn:
            claimed, _ = self._claim_rows(  # type: ignore[attr-defined]
                conn, worker_id, task_types, limit, now, claim_ttl, tenant_id, token=claim_token
            )
        return claimed  # type: ignore[no-any-return]

    def task_claim_once(
        self, worker_id: str, task_types: Sequence[str], limit: int, now: datetime,
        claim_ttl: float, claim_id: str, tenant_id: str | None = None,
    ) -> list[ClaimedTask] | None:
        """task_claim (with `tenant_id`, task_claim_scoped) under an HTTP worker's claim_id,
        which claims once: a claim that claimed writes the claim_id (of this worker and
        tenant) in its own transaction. A second send of it, on any node, meets that row in
        the primary key, waits for the first send's transaction and, once it committed,
        is undone: None (nothing claimed). One statement more than a plain claim, only when
        it claimed."""
        if limit <= 0 or not task_types:
            return []
        try:
            with self._tx() as conn:
                claimed, _ = self._claim_rows(  # type: ignore[attr-defined]
                    conn, worker_id, task_types, limit, now, claim_ttl, tenant_id,
                    token=claim_id,
                )
                if claimed and conn.execute(_RECORD_CLAIM_ID, {
                    "id": claim_id, "w": worker_id, "t": tenant_id or "", "now": now,
                    "old": now - CLAIM_IDS_KEPT, "n": CLAIM_IDS_PRUNED,
                }).fetchone() is None:
                    raise ClaimedBefore
        except ClaimedBefore:
            return None
        return claimed  # type: ignore[no-any-return]

    def task_claim_forget(
        self, worker_id: str, claim_id: str, tenant_id: str | None = None
    ) -> None:
        """Forget that this claim_id claimed (its tasks were given back): a resend of it
        claims anew."""
        if not is_uuid(claim_id):
            return
        with self._tx() as conn:
            conn.execute("DELETE FROM worker_claims WHERE claim_id = %s AND worker_id = %s "
                         "AND tenant_id = %s", (claim_id, worker_id, tenant_id or ""))

    def task_claimed(
        self, worker_id: str, claim_token: str, tenant_id: str | None = None
    ) -> list[ClaimedTask]:
        """The tasks a claim made with this token (an HTTP worker's claim_id) by this worker
        still runs, in claim order: what that claim answered, less what has ended since.
        tasks has no index on claim_token: the RUNNING tasks are read from task_queue and
        probed by key, as the rescuer reads them (joined, the planner may read all of tasks)."""
        from creep.storage.postgres_store import _CLAIM_PLANNER, _row_to_task

        if not is_uuid(claim_token):
            return []
        tenant = "" if tenant_id is None else " AND tenant_id = %(tenant)s"
        with self._tx() as conn:
            conn.execute(_CLAIM_PLANNER)
            rows = conn.execute(
                f"""SELECT deadline_at, {TASK_SELECT} FROM tasks
                WHERE task_id = ANY(ARRAY(
                    SELECT task_id FROM task_queue WHERE status = 'RUNNING'{tenant}))
                  AND status = 'RUNNING' AND claim_token = %(tok)s AND claimed_by = %(w)s
                ORDER BY priority DESC, created_at""",
                {"tok": claim_token, "w": worker_id, "tenant": tenant_id},
            ).fetchall()
        return [ClaimedTask(_row_to_task(r[1:]), claim_token, r[0]) for r in rows]

    def task_claim_held(self, task_id: str, claim_token: str) -> bool:
        """Whether the task runs under this claim now (a read: nothing is renewed)."""
        if not (is_uuid(task_id) and is_uuid(claim_token)):
            return False
        with self._tx() as conn:
            row = conn.execute(
                "SELECT 1 FROM tasks WHERE task_id = %s AND claim_token = %s "
                "AND status = 'RUNNING'",
                (task_id, claim_token),
            ).fetchone()
        return row is not None

    def task_event_append(
        self, task_id: str, claim_token: str, event_type: str, payload: dict[str, Any],
        now: datetime,
    ) -> TaskEvent | None:
        """A worker's own event on the task it runs; None unless it still holds the claim."""
        from creep.storage.postgres_store import _row_to_event

        if not (is_uuid(task_id) and is_uuid(claim_token)):
            return None
        with self._tx() as conn:
            # The task's row lock is taken before the event's id is drawn, as by every writer
            # of a task's events: one task's event ids then follow commit order
            # (PostgresStore.task_events).
            row = conn.execute(
                f"""WITH t AS (
                    SELECT task_id, tenant_id, status, attempt FROM tasks
                    WHERE task_id = %s AND claim_token = %s AND status = 'RUNNING'
                    FOR NO KEY UPDATE
                )
                INSERT INTO task_events ({_EVENT_COLUMNS})
                SELECT task_id, tenant_id, %s, status, status, attempt, %s, %s FROM t
                RETURNING event_id, txid::text, {_EVENT_COLUMNS}""",
                (task_id, claim_token, event_type, Jsonb(payload), now),
            ).fetchone()
        return None if row is None else _row_to_event(row)
