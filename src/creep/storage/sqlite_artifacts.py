"""SQLite half of task artifacts and of the HTTP worker protocol (a mixin of SqliteStore)."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from contextlib import AbstractContextManager
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import orjson

from creep.domain.artifacts import ARTIFACT_ADDED, Artifact, ArtifactKind
from creep.domain.errors import NotFound, TaskDeleted
from creep.domain.events import TaskEvent
from creep.ports import ClaimedTask
from creep.storage.common import (
    CLAIM_IDS_KEPT,
    CLAIM_IDS_PRUNED,
    TASK_SELECT,
    ClaimedBefore,
    dumps,
)

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ARTIFACT_COLUMNS = (
    "artifact_id, task_id, tenant_id, kind, file_name, mime_type, size_bytes, width, height, "
    "checksum, object_key, metadata, created_at"
)
_EVENT_SELECT = (
    "event_id, task_id, tenant_id, event_type, from_status, to_status, attempt, payload, "
    "created_at"
)


def _us(dt: datetime) -> int:
    delta = dt - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def _row_to_artifact(r: Sequence[Any]) -> Artifact:
    return Artifact(
        artifact_id=r[0], task_id=r[1], tenant_id=r[2], kind=ArtifactKind(r[3]), file_name=r[4],
        mime_type=r[5], size_bytes=r[6], width=r[7], height=r[8], checksum=r[9],
        object_key=r[10], metadata=orjson.loads(r[11]),
        created_at=_EPOCH + timedelta(microseconds=r[12]),
    )


class SqliteArtifactsMixin:
    if TYPE_CHECKING:
        def _conn(self) -> sqlite3.Connection: ...
        def _write(self) -> AbstractContextManager[sqlite3.Connection]: ...

    # -- artifacts -----------------------------------------------------------------------------

    def artifact_create(self, artifact: Artifact) -> Artifact:
        with self._write() as conn:
            owner = conn.execute(
                "SELECT tenant_id, deleted_at FROM tasks WHERE task_id = ?", (artifact.task_id,)
            ).fetchone()
            if owner is None or owner[0] != artifact.tenant_id:
                raise NotFound("task", artifact.task_id)
            if owner[1] is not None:  # deleted since the upload was staged
                raise TaskDeleted(artifact.task_id, ARTIFACT_ADDED)
            conn.execute(
                f"INSERT INTO task_artifacts ({_ARTIFACT_COLUMNS}) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (artifact.artifact_id, artifact.task_id, artifact.tenant_id, artifact.kind.value,
                 artifact.file_name, artifact.mime_type, artifact.size_bytes, artifact.width,
                 artifact.height, artifact.checksum, artifact.object_key,
                 dumps(artifact.metadata), _us(artifact.created_at)),
            )
        return artifact

    def artifact_get(self, artifact_id: str, tenant_id: str | None = None) -> Artifact:
        row = self._conn().execute(
            f"SELECT {_ARTIFACT_COLUMNS} FROM task_artifacts WHERE artifact_id = ?",
            (artifact_id,),
        ).fetchone()
        if row is None or (tenant_id is not None and row[2] != tenant_id):
            raise NotFound("artifact", artifact_id)
        return _row_to_artifact(row)

    def artifact_list(
        self, task_id: str, tenant_id: str | None = None, kind: str | None = None
    ) -> list[Artifact]:
        conn = self._conn()
        owner = conn.execute("SELECT tenant_id FROM tasks WHERE task_id = ?", (task_id,)).fetchone()
        if owner is None or (tenant_id is not None and owner[0] != tenant_id):
            raise NotFound("task", task_id)
        sql = f"SELECT {_ARTIFACT_COLUMNS} FROM task_artifacts WHERE task_id = ?"
        params: list[Any] = [task_id]
        if kind is not None:
            sql += " AND kind = ?"
            params.append(kind)
        rows = conn.execute(sql + " ORDER BY created_at, artifact_id", params).fetchall()
        return [_row_to_artifact(r) for r in rows]

    def artifact_scan(self, after: str | None = None, limit: int = 1000) -> list[Artifact]:
        """Every artifact row in artifact_id order, a page at a time (for reconcile)."""
        rows = self._conn().execute(
            f"SELECT {_ARTIFACT_COLUMNS} FROM task_artifacts WHERE artifact_id > ? "
            "ORDER BY artifact_id LIMIT ?",
            (after or "", limit),
        ).fetchall()
        return [_row_to_artifact(r) for r in rows]

    def artifact_remove(
        self, artifact_ids: Sequence[str], reason: str, now: datetime
    ) -> list[Artifact]:
        """Drop index rows whose content is gone; each leaves an `artifact_removed` task event."""
        if not artifact_ids:
            return []
        ids = orjson.dumps(list(artifact_ids)).decode()
        with self._write() as conn:
            rows = conn.execute(
                f"DELETE FROM task_artifacts WHERE artifact_id IN (SELECT value FROM json_each(?)) "
                f"RETURNING {_ARTIFACT_COLUMNS}",
                (ids,),
            ).fetchall()
            removed = [_row_to_artifact(r) for r in rows]
            for a in removed:
                conn.execute(
                    "INSERT INTO task_events (task_id, tenant_id, event_type, from_status, "
                    "to_status, attempt, payload, created_at) SELECT task_id, tenant_id, "
                    "'artifact_removed', status, status, attempt, ?, ? FROM tasks WHERE task_id = ?",
                    (dumps({"artifact_id": a.artifact_id, "file_name": a.file_name,
                            "kind": a.kind.value, "checksum": a.checksum, "reason": reason}),
                     _us(now), a.task_id),
                )
        return removed

    # -- HTTP worker protocol ------------------------------------------------------------------

    def task_claim_scoped(
        self, worker_id: str, task_types: Sequence[str], limit: int, now: datetime,
        claim_ttl: float, tenant_id: str, claim_token: str | None = None,
    ) -> list[ClaimedTask]:
        """task_claim restricted to one tenant's tasks (a tenant key's worker): the same claim
        (leases for hinted tasks included) with a tenant filter."""
        from creep.storage.sqlite_store import _claimed

        if limit <= 0 or not task_types:
            return []
        with self._write() as conn:
            rows, token = self._claim_rows(  # type: ignore[attr-defined]
                conn, worker_id, task_types, limit, now, claim_ttl, tenant_id, token=claim_token
            )
        return _claimed(rows, token)

    def task_claim_once(
        self, worker_id: str, task_types: Sequence[str], limit: int, now: datetime,
        claim_ttl: float, claim_id: str, tenant_id: str | None = None,
    ) -> list[ClaimedTask] | None:
        """task_claim (with `tenant_id`, task_claim_scoped) under an HTTP worker's claim_id,
        which claims once: a claim that claimed writes the claim_id (of this worker and
        tenant) in its own transaction. None when a send of it claimed before: this claim is
        undone (the write lock already keeps a second send out until the first commits)."""
        from creep.storage.sqlite_store import _claimed

        if limit <= 0 or not task_types:
            return []
        try:
            with self._write() as conn:
                rows, token = self._claim_rows(  # type: ignore[attr-defined]
                    conn, worker_id, task_types, limit, now, claim_ttl, tenant_id,
                    token=claim_id,
                )
                if rows:
                    _record_claim_id(conn, claim_id, worker_id, tenant_id, now)
        except ClaimedBefore:
            return None
        return _claimed(rows, token)

    def task_claim_forget(
        self, worker_id: str, claim_id: str, tenant_id: str | None = None
    ) -> None:
        """Forget that this claim_id claimed (its tasks were given back): a resend of it
        claims anew."""
        with self._write() as conn:
            conn.execute("DELETE FROM worker_claims WHERE claim_id = ? AND worker_id = ? "
                         "AND tenant_id = ?", (claim_id, worker_id, tenant_id or ""))

    def task_claimed(
        self, worker_id: str, claim_token: str, tenant_id: str | None = None
    ) -> list[ClaimedTask]:
        """The tasks a claim made with this token (an HTTP worker's claim_id) by this worker
        still runs, in claim order: what that claim answered, less what has ended since. It
        reads the RUNNING tasks (tasks has no index on claim_token), through their index as
        the rescuer does (the planner would otherwise take a tenant's whole history)."""
        from creep.storage.sqlite_store import _row_to_task

        rows = self._conn().execute(
            f"SELECT deadline_at, {TASK_SELECT} FROM tasks INDEXED BY tasks_running "
            "WHERE status = 'RUNNING' AND claim_token = ?1 AND claimed_by = ?2 "
            "AND (?3 IS NULL OR tenant_id = ?3) ORDER BY priority DESC, created_at",
            (claim_token, worker_id, tenant_id),
        ).fetchall()
        return [ClaimedTask(_row_to_task(r[1:]), claim_token,
                            _EPOCH + timedelta(microseconds=r[0])) for r in rows]

    def task_claim_held(self, task_id: str, claim_token: str) -> bool:
        """Whether the task runs under this claim now (a read: nothing is renewed)."""
        row = self._conn().execute(
            "SELECT 1 FROM tasks WHERE task_id = ? AND claim_token = ? AND status = 'RUNNING'",
            (task_id, claim_token),
        ).fetchone()
        return row is not None

    def task_event_append(
        self, task_id: str, claim_token: str, event_type: str, payload: dict[str, Any],
        now: datetime,
    ) -> TaskEvent | None:
        """A worker's own event on the task it runs; None unless it still holds the claim."""
        from creep.storage.sqlite_store import _row_to_event

        with self._write() as conn:
            row = conn.execute(
                "INSERT INTO task_events (task_id, tenant_id, event_type, from_status, to_status, "
                "attempt, payload, created_at) SELECT task_id, tenant_id, ?, status, status, "
                "attempt, ?, ? FROM tasks WHERE task_id = ? AND claim_token = ? "
                f"AND status = 'RUNNING' RETURNING {_EVENT_SELECT}",
                (event_type, dumps(payload), _us(now), task_id, claim_token),
            ).fetchone()
        return None if row is None else _row_to_event(row)


def _record_claim_id(
    conn: sqlite3.Connection, claim_id: str, worker_id: str, tenant_id: str | None,
    now: datetime,
) -> None:
    """Write the claim_id of the claim in `conn`'s transaction, pruning a few rows past
    CLAIM_IDS_KEPT; ClaimedBefore when it is written already."""
    conn.execute(
        "DELETE FROM worker_claims WHERE rowid IN (SELECT rowid FROM worker_claims "
        "WHERE claimed_at < ? LIMIT ?)",
        (_us(now - CLAIM_IDS_KEPT), CLAIM_IDS_PRUNED),
    )
    cur = conn.execute(
        "INSERT INTO worker_claims (claim_id, worker_id, tenant_id, claimed_at) "
        "VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
        (claim_id, worker_id, tenant_id or "", _us(now)),
    )
    if cur.rowcount != 1:
        raise ClaimedBefore
