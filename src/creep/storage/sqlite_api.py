"""SQLite side of the REST API's storage port (`creep.ports_api.ApiStore`), mixed into
SqliteStore. Methods named `_api_*` run on a connection inside an open write transaction
(called from pending writes, see `storage/pending_writes.py`)."""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import orjson

from creep.domain.audit import AuditEvent
from creep.domain.batch import Batch
from creep.domain.errors import ConflictError, NotFound, StorageError
from creep.domain.task import TaskOrder
from creep.domain.tenancy import TENANT_CHANGEABLE, ApiKey, PrincipalType, Role, Tenant
from creep.ports_api import (
    SECRET_COLUMNS,
    SNAPSHOT_TABLES,
    AsyncTaskInserter,
    AuditFilter,
    AuditRow,
    BatchCancelled,
)
from creep.storage import pending_writes
from creep.storage.common import sortable_cursor, status_counts_where
from creep.storage.sqlite_bulk import insert_rows, rows_per_statement

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_TENANT = "tenant_id, name, rate_limit_per_second, rate_limit_burst, max_active_tasks, created_at"
_KEY = (
    "key_id, name, role, tenant_id, read_only, principal_type, key_hint, created_at, revoked_at"
)
_AUDIT = (
    "id, seq, timestamp, action, resource_type, resource, principal, tenant_id, diff_object, "
    "client_ip, user_agent, request_method, request_id, data, created_at"
)
_BATCH = "batch_id, tenant_id, title, metadata, total_count, created_at, updated_at, cancelled_at"
_OPEN = ("PENDING", "QUEUED", "RUNNING")


def _us(dt: datetime) -> int:
    delta = dt - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def _dt(value: int | None) -> datetime | None:
    return None if value is None else _EPOCH + timedelta(microseconds=value)


def _dt_req(value: int) -> datetime:
    return _EPOCH + timedelta(microseconds=value)


def _tenant(r: Sequence[Any]) -> Tenant:
    return Tenant(r[0], r[1], r[2], r[3], r[4], _dt_req(r[5]))


def _key(r: Sequence[Any]) -> ApiKey:
    return ApiKey(
        key_id=r[0], name=r[1], role=Role(r[2]), tenant_id=r[3], read_only=bool(r[4]),
        principal_type=PrincipalType(r[5]), key_hint=r[6], created_at=_dt_req(r[7]),
        revoked_at=_dt(r[8]),
    )


def _audit(r: Sequence[Any]) -> AuditEvent:
    return AuditEvent(
        id=r[0], seq=r[1], timestamp=r[2], action=r[3], resource_type=r[4],
        resource=orjson.loads(r[5]), user=orjson.loads(r[6]), tenant_id=r[7],
        diff_object=orjson.loads(r[8]) if r[8] else {}, client_ip=r[9], user_agent=r[10],
        request_method=r[11], request_id=r[12], data=orjson.loads(r[13]),
        created_at=_dt_req(r[14]),
    )


def _batch(r: Sequence[Any]) -> Batch:
    return Batch(
        batch_id=r[0], tenant_id=r[1], title=r[2], metadata=orjson.loads(r[3]),
        total_count=r[4], created_at=_dt_req(r[5]), updated_at=_dt_req(r[6]),
        cancelled_at=_dt(r[7]),
    )


class SqliteApiMixin:
    if TYPE_CHECKING:

        def _conn(self) -> sqlite3.Connection: ...
        def _write(self) -> AbstractContextManager[sqlite3.Connection]: ...
        def _get_for_update(
            self, conn: sqlite3.Connection, task_id: str, tenant_id: str | None
        ) -> TaskOrder: ...
        def schema_version(self) -> int: ...
        def _cancel_dependants(
            self, conn: sqlite3.Connection, parents: list[str], now_us: int) -> None: ...
        def _wake(self, channel: str, payload: str) -> None: ...

        path: str

    def async_task_inserter(self) -> AsyncTaskInserter | None:
        """None: Python's sqlite3 has no async driver, so the API's task writer thread
        writes every batch (see api/create_batcher.py)."""
        return None

    # -- tenants and keys ----------------------------------------------------------------------

    def tenant_create(self, tenant: Tenant) -> Tenant:
        with self._write() as conn:
            try:
                conn.execute(
                    f"INSERT INTO tenants ({_TENANT}) VALUES (?, ?, ?, ?, ?, ?)",
                    (tenant.tenant_id, tenant.name, tenant.rate_limit_per_second,
                     tenant.rate_limit_burst, tenant.max_active_tasks, _us(tenant.created_at)),
                )
            except sqlite3.IntegrityError:
                raise ConflictError(f"tenant {tenant.tenant_id!r} already exists") from None
        return tenant

    def tenant_get(self, tenant_id: str) -> Tenant:
        row = self._conn().execute(
            f"SELECT {_TENANT} FROM tenants WHERE tenant_id = ?", (tenant_id,)
        ).fetchone()
        if row is None:
            raise NotFound("tenant", tenant_id)
        return _tenant(row)

    def tenant_update(self, tenant_id: str, changes: Mapping[str, Any]) -> Tenant:
        """Set the given fields (TENANT_CHANGEABLE) of a tenant; NotFound if there is none."""
        unknown = set(changes) - TENANT_CHANGEABLE
        if unknown:
            raise ValueError(f"not a changeable tenant field: {sorted(unknown)}")
        with self._write() as conn:
            if conn.execute("SELECT 1 FROM tenants WHERE tenant_id = ?",
                            (tenant_id,)).fetchone() is None:
                raise NotFound("tenant", tenant_id)
            pending_writes.before_change(self, conn)  # the REST API's audit row: the old row
            if changes:
                conn.execute(
                    f"UPDATE tenants SET {', '.join(f'{name} = ?' for name in changes)} "
                    "WHERE tenant_id = ?",
                    (*changes.values(), tenant_id),
                )
            row = conn.execute(
                f"SELECT {_TENANT} FROM tenants WHERE tenant_id = ?", (tenant_id,)
            ).fetchone()
        return _tenant(row)

    def tenant_list(self, *, after: str | None = None, limit: int = 100) -> list[Tenant]:
        rows = self._conn().execute(
            f"SELECT {_TENANT} FROM tenants WHERE tenant_id > ? ORDER BY tenant_id LIMIT ?",
            (after or "", limit),
        ).fetchall()
        return [_tenant(r) for r in rows]

    def key_create(self, key: ApiKey, key_hash: str) -> ApiKey:
        with self._write() as conn:
            self._insert_key(conn, key, key_hash)
        return key

    def _insert_key(self, conn: sqlite3.Connection, key: ApiKey, key_hash: str) -> None:
        try:
            conn.execute(
                f"INSERT INTO api_keys ({_KEY}, key_hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (key.key_id, key.name, key.role.value, key.tenant_id, int(key.read_only),
                 key.principal_type.value, key.key_hint, _us(key.created_at),
                 _us(key.revoked_at) if key.revoked_at else None, key_hash),
            )
        except sqlite3.IntegrityError as exc:
            raise ConflictError(f"api key cannot be stored: {exc}") from None

    def key_get(self, key_id: str) -> ApiKey:
        row = self._conn().execute(
            f"SELECT {_KEY} FROM api_keys WHERE key_id = ?", (key_id,)
        ).fetchone()
        if row is None:
            raise NotFound("api key", key_id)
        return _key(row)

    def key_by_hash(self, key_hash: str) -> ApiKey | None:
        row = self._conn().execute(
            f"SELECT {_KEY} FROM api_keys WHERE key_hash = ?", (key_hash,)
        ).fetchone()
        return None if row is None else _key(row)

    def key_revoke(self, key_id: str, now: datetime) -> ApiKey:
        with self._write() as conn:
            row = conn.execute(
                "UPDATE api_keys SET revoked_at = COALESCE(revoked_at, ?) WHERE key_id = ? "
                f"RETURNING {_KEY}",
                (_us(now), key_id),
            ).fetchone()
        if row is None:
            raise NotFound("api key", key_id)
        return _key(row)

    def key_ensure(self, key: ApiKey, key_hash: str) -> tuple[ApiKey, bool]:
        """Store `key` unless one with this hash exists; (the key, whether it was created)."""
        with self._write() as conn:
            row = conn.execute(
                f"SELECT {_KEY} FROM api_keys WHERE key_hash = ?", (key_hash,)
            ).fetchone()
            if row is not None:
                return _key(row), False
            self._insert_key(conn, key, key_hash)
        return key, True

    def commit_pending(self) -> None:
        """A write transaction holding only the pending writes of the current scope (e.g. the
        audit row of a request that changed nothing in this database)."""
        with self._write():
            pass

    # -- audit ---------------------------------------------------------------------------------

    def _api_insert_audit(self, conn: sqlite3.Connection, row: AuditRow) -> None:
        self._api_insert_audits(conn, [row])

    def _api_insert_audits(
        self, conn: sqlite3.Connection, rows: Sequence[AuditRow], *,
        created_at: datetime | None = None,
    ) -> None:
        """One statement per chunk of rows, not one per row (sqlite_bulk.py). With
        `created_at`, only the rows whose resource is a task created at that instant (by this
        transaction: a replay creates nothing) are written, in the same statement."""
        values = [
            (row.id, row.timestamp_ms, row.action, row.resource_type,
             orjson.dumps(row.resource), str(row.resource.get("identifier", "")),
             orjson.dumps(row.user), str(row.user.get("uid", "")), row.tenant_id,
             orjson.dumps(row.diff_object), row.client_ip, row.user_agent, row.request_method,
             row.request_id, orjson.dumps(row.data), _us(row.created_at))
            for row in rows
        ]
        if created_at is None:
            insert_rows(conn, f"INSERT INTO audit_events ({_AUDIT_COLUMNS})", 16, values)
            return
        one = "(" + ", ".join("?" * 16) + ")"
        per = rows_per_statement(16)
        for start in range(0, len(values), per):
            chunk = values[start:start + per]
            conn.execute(
                f"INSERT INTO audit_events ({_AUDIT_COLUMNS}) SELECT * FROM (VALUES "
                f"{', '.join([one] * len(chunk))}) v WHERE EXISTS (SELECT 1 FROM tasks t "
                "WHERE t.task_id = v.column6 AND t.created_at = ?)",
                [*(value for row in chunk for value in row), _us(created_at)],
            )

    def _api_created_now(
        self, conn: sqlite3.Connection, task_ids: Sequence[str], now: datetime
    ) -> set[str]:
        """Which of these tasks were created at `now` (by the open transaction)."""
        return {r[0] for r in conn.execute(
            "SELECT task_id FROM tasks WHERE task_id IN (SELECT value FROM json_each(?)) "
            "AND created_at = ?",
            (orjson.dumps(list(task_ids)).decode(), _us(now)),
        )}

    def _api_task_snapshots(
        self, conn: sqlite3.Connection, task_ids: Sequence[str]
    ) -> dict[str, dict[str, Any]]:
        """Audit snapshots of many tasks in one query (inside the open transaction)."""
        from creep.ports_api import task_snapshot
        from creep.storage.common import TASK_SELECT
        from creep.storage.sqlite_store import _row_to_task

        rows = conn.execute(
            f"SELECT {TASK_SELECT} FROM tasks WHERE task_id IN (SELECT value FROM json_each(?))",
            (orjson.dumps(list(task_ids)).decode(),),
        ).fetchall()
        tasks = [_row_to_task(r) for r in rows]
        return {t.task_id: task_snapshot(t) for t in tasks}

    def _api_snapshot(
        self, conn: sqlite3.Connection, resource_type: str, resource_id: str
    ) -> dict[str, Any] | None:
        """The current row of a resource inside the open transaction (None: not there)."""
        if resource_type == "task":
            from creep.ports_api import task_snapshot

            try:
                return task_snapshot(self._get_for_update(conn, resource_id, None))
            except NotFound:
                return None
        table, key = SNAPSHOT_TABLES[resource_type]
        cur = conn.execute(f"SELECT * FROM {table} WHERE {key} = ?", (resource_id,))
        row = cur.fetchone()
        if row is None:
            return None
        names = [d[0] for d in cur.description]
        return {n: v for n, v in zip(names, row, strict=True) if n not in SECRET_COLUMNS}

    def snapshot(self, resource_type: str, resource_id: str) -> dict[str, Any] | None:
        """What an audit diff records of a resource now (call it outside a pending scope)."""
        return self._api_snapshot(self._conn(), resource_type, resource_id)

    def audit_list(
        self, flt: AuditFilter, *, after: int | None = None, limit: int = 100
    ) -> list[AuditEvent]:
        where, params = _audit_where(flt)
        if after is not None:
            where.append("seq < ?")
            params.append(after)
        params.append(limit)
        rows = self._conn().execute(
            f"SELECT {_AUDIT} FROM audit_events WHERE {' AND '.join(where) or '1'} "
            "ORDER BY seq DESC LIMIT ?",
            params,
        ).fetchall()
        return [_audit(r) for r in rows]

    # -- batches -------------------------------------------------------------------------------

    def _api_batch_task_count(self, conn: sqlite3.Connection, batch_id: str) -> int:
        """How many tasks of this batch exist, in the caller's open transaction."""
        row = conn.execute(
            "SELECT count(*) FROM tasks WHERE batch_id = ?", (batch_id,)
        ).fetchone()
        return int(row[0]) if row else 0

    def _api_insert_batch(self, conn: sqlite3.Connection, batch: Batch) -> None:
        # Only with a task of it: a batch whose every task replays one of an earlier batch
        # (the same request sent again) answers with that batch and leaves no empty one.
        conn.execute(
            f"INSERT INTO batches ({_BATCH}) SELECT ?, ?, ?, ?, ?, ?, ?, NULL "
            "WHERE EXISTS (SELECT 1 FROM tasks WHERE batch_id = ?)",
            (batch.batch_id, batch.tenant_id, batch.title, orjson.dumps(batch.metadata),
             batch.total_count, _us(batch.created_at), _us(batch.updated_at), batch.batch_id),
        )

    def batch_get(self, batch_id: str, tenant_id: str | None = None) -> Batch:
        row = self._conn().execute(
            f"SELECT {_BATCH} FROM batches WHERE batch_id = ?", (batch_id,)
        ).fetchone()
        if row is None or (tenant_id is not None and row[1] != tenant_id):
            raise NotFound("batch", batch_id)
        return _batch(row)

    def batch_list(
        self, tenant_id: str | None, *, after: str | None = None, limit: int = 100
    ) -> list[Batch]:
        where: list[str] = ["1"]
        params: list[Any] = []
        if tenant_id is not None:
            where.append("tenant_id = ?")
            params.append(tenant_id)
        if after:
            created, last = sortable_cursor(after, micros=True)
            where.append("(created_at, batch_id) < (?, ?)")
            params.extend([created, last])
        rows = self._conn().execute(
            f"SELECT {_BATCH} FROM batches WHERE {' AND '.join(where)} "
            "ORDER BY created_at DESC, batch_id DESC LIMIT ?",
            (*params, limit),
        ).fetchall()
        return [_batch(r) for r in rows]

    @staticmethod
    def batch_cursor(batch: Batch) -> str:
        return f"{_us(batch.created_at)}/{batch.batch_id}"

    def batch_task_counts(self, batch_id: str, tenant_id: str) -> dict[str, tuple[int, int]]:
        """The batch's tasks are those of its tenant: batch_id is a free field of a task,
        another tenant's task naming this batch is not in it."""
        rows = self._conn().execute(
            "SELECT status, count(*), coalesce(sum(progress), 0) FROM tasks "
            "WHERE batch_id = ? AND tenant_id = ? GROUP BY status",
            (batch_id, tenant_id),
        ).fetchall()
        return {r[0]: (r[1], r[2]) for r in rows}

    def batch_cancel(
        self, batch_id: str, now: datetime, tenant_id: str | None = None
    ) -> tuple[Batch, BatchCancelled]:
        """Cancel the batch and every unfinished task of it in ONE transaction: PENDING and
        QUEUED tasks become CANCELLED (and their dependants with them), RUNNING ones are asked
        to stop. BEGIN IMMEDIATE keeps claims out until it commits: all or nothing."""
        now_us = _us(now)
        done = BatchCancelled()
        with self._write() as conn:
            row = conn.execute(
                f"SELECT {_BATCH} FROM batches WHERE batch_id = ?", (batch_id,)
            ).fetchone()
            if row is None or (tenant_id is not None and row[1] != tenant_id):
                raise NotFound("batch", batch_id)
            conn.execute(
                "UPDATE batches SET cancelled_at = COALESCE(cancelled_at, ?1), updated_at = ?1 "
                "WHERE batch_id = ?2",
                (now_us, batch_id),
            )
            tasks = conn.execute(
                "SELECT task_id, tenant_id, status, attempt, cancel_requested FROM tasks "
                "WHERE batch_id = ? AND tenant_id = ? AND status IN (?, ?, ?) ORDER BY task_id",
                (batch_id, row[1], *_OPEN),  # the batch's tenant's (batch_task_counts)
            ).fetchall()
            payload = orjson.dumps({"reason": "batch cancelled", "batch_id": batch_id})
            events: list[tuple[Any, ...]] = []
            for task_id, tenant, status, attempt, cancel_requested in tasks:
                if status == "RUNNING":
                    if not cancel_requested:
                        done.requested.append(task_id)
                        events.append((task_id, tenant, "cancel_requested", status, status,
                                       attempt, payload, now_us))
                else:
                    done.cancelled.append(task_id)
                    events.append((task_id, tenant, "cancelled", status, "CANCELLED", attempt,
                                   payload, now_us))
            for ids, sql in (
                (done.cancelled, "UPDATE tasks SET status = 'CANCELLED', result_code = "
                 "'CANCELLED', result_message = 'batch cancelled', finished_at = ?1, "
                 "updated_at = ?1, task_version = task_version + 1 "
                 "WHERE task_id IN (SELECT value FROM json_each(?2))"),
                (done.requested, "UPDATE tasks SET cancel_requested = 1, updated_at = ?1, "
                 "task_version = task_version + 1 "
                 "WHERE task_id IN (SELECT value FROM json_each(?2))"),
            ):
                if ids:
                    conn.execute(sql, (now_us, orjson.dumps(ids).decode()))
            conn.executemany(
                "INSERT INTO task_events (task_id, tenant_id, event_type, from_status, "
                "to_status, attempt, payload, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                events,
            )
            if done.cancelled:
                self._cancel_dependants(conn, done.cancelled, now_us)
            updated = conn.execute(
                f"SELECT {_BATCH} FROM batches WHERE batch_id = ?", (batch_id,)
            ).fetchone()
        for task_id in done.requested:
            self._wake("creep_cancel", task_id)
        return _batch(updated), done

    # -- limits --------------------------------------------------------------------------------

    def _api_lock_tenant(self, conn: sqlite3.Connection, tenant_id: str) -> None:
        """Serialise quota decisions per tenant: BEGIN IMMEDIATE already serialises writers."""

    def _api_active_tasks(self, conn: sqlite3.Connection, tenant_id: str) -> int:
        """The tenant's unfinished tasks, through tasks_tenant_active (its predicate as is)."""
        row = conn.execute(
            "SELECT count(*) FROM tasks WHERE tenant_id = ? "
            "AND status IN ('PENDING', 'QUEUED', 'RUNNING')",
            (tenant_id,),
        ).fetchone()
        return int(row[0])

    def _api_any_exists(self, conn: sqlite3.Connection, task_ids: Sequence[str]) -> bool:
        row = conn.execute(
            "SELECT 1 FROM tasks WHERE task_id IN (SELECT value FROM json_each(?)) LIMIT 1",
            (orjson.dumps(list(task_ids)).decode(),),
        ).fetchone()
        return row is not None

    def rate_take(self, bucket: str, rate: float, burst: int, now: datetime) -> float:
        """Take one token from a shared bucket; 0.0 if granted, else seconds until one is."""
        now_us = _us(now)
        with self._write() as conn:
            row = conn.execute(
                "SELECT tokens, updated_at FROM rate_buckets WHERE bucket = ?", (bucket,)
            ).fetchone()
            tokens = float(burst) if row is None else min(
                float(burst), row[0] + max(0, now_us - row[1]) / 1e6 * rate
            )
            granted = tokens >= 1.0
            if granted:
                tokens -= 1.0
            conn.execute(
                "INSERT INTO rate_buckets (bucket, tokens, updated_at) VALUES (?1, ?2, ?3) "
                "ON CONFLICT (bucket) DO UPDATE SET tokens = ?2, updated_at = ?3",
                (bucket, tokens, now_us),
            )
        return 0.0 if granted else (1.0 - tokens) / rate if rate > 0 else 3600.0

    # -- operations ----------------------------------------------------------------------------

    def ping(self, timeout: float) -> int:
        """The schema version, read over a fresh read-only connection (no waiting on writers
        beyond `timeout`); StorageError when the database file cannot be read."""
        try:
            conn = sqlite3.connect(
                f"file:{self.path}?mode=ro", uri=True, timeout=timeout, check_same_thread=False
            )
            try:
                row = conn.execute("SELECT max(version) FROM schema_migrations").fetchone()
            finally:
                conn.close()
        except sqlite3.Error as exc:
            raise StorageError(f"database {self.path} is not readable: {exc}") from exc
        return int(row[0] or 0)

    def queue_depth(self) -> list[tuple[str, int, int]]:
        """(status, priority band 0-9 by tens, count) of every unfinished task."""
        rows = self._conn().execute(
            "SELECT status, min(priority / 10, 9), count(*) FROM tasks "
            "WHERE status IN ('PENDING', 'QUEUED', 'RUNNING') GROUP BY 1, 2"
        ).fetchall()
        return [(r[0], int(r[1]), int(r[2])) for r in rows]

    def task_status_counts(
        self, tenant_id: str | None, *, deleted: bool = False
    ) -> dict[str, int]:
        """How many tasks are in each status (of one tenant, or of all): those not deleted,
        as task_list lists them, or (`deleted`) those in the recycle bin."""
        where, params = status_counts_where(tenant_id, deleted, "?")
        rows = self._conn().execute(
            f"SELECT status, count(*) FROM tasks WHERE {where} GROUP BY status", params
        ).fetchall()
        return {r[0]: int(r[1]) for r in rows}


def _audit_where(flt: AuditFilter) -> tuple[list[str], list[Any]]:
    where: list[str] = []
    params: list[Any] = []
    for column, value in (
        ("resource_type", flt.resource_type), ("action", flt.action),
        ("principal_uid", flt.principal), ("resource_id", flt.resource_id),
        ("request_id", flt.request_id), ("tenant_id", flt.tenant_id),
    ):
        if value is not None:
            where.append(f"{column} = ?")
            params.append(value)
    if flt.time_from is not None:
        where.append("timestamp >= ?")
        params.append(int(flt.time_from.timestamp() * 1000))
    if flt.time_to is not None:
        where.append("timestamp < ?")
        params.append(int(flt.time_to.timestamp() * 1000))
    return where, params



_AUDIT_COLUMNS = (
    "id, timestamp, action, resource_type, resource, resource_id, principal, principal_uid, "
    "tenant_id, diff_object, client_ip, user_agent, request_method, request_id, data, "
    "created_at"
)
