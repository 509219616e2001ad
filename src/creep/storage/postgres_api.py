"""PostgreSQL side of the REST API's storage port (`creep.ports_api.ApiStore`), mixed into
PostgresStore. Methods named `_api_*` run on a connection inside an open transaction (called
from pending writes, see `storage/pending_writes.py`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from datetime import datetime
from typing import TYPE_CHECKING, Any

import orjson
import psycopg
from psycopg.types.json import Jsonb

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

_TENANT = "tenant_id, name, rate_limit_per_second, rate_limit_burst, max_active_tasks, created_at"
_KEY = (
    "key_id, name, role, tenant_id, read_only, principal_type, key_hint, created_at, revoked_at"
)
_AUDIT = (
    "id, seq, timestamp, action, resource_type, resource, principal, tenant_id, diff_object, "
    "client_ip, user_agent, request_method, request_id, data, created_at"
)
#: Tokens in a bucket now: what it had plus the refill since, capped at the burst size.
_REFILL = (
    "least(%(burst)s, b.tokens + greatest(0, extract(epoch FROM %(now)s - b.updated_at))"
    " * %(rate)s)"
)
_BATCH = "batch_id, tenant_id, title, metadata, total_count, created_at, updated_at, cancelled_at"


def _tenant(r: Sequence[Any]) -> Tenant:
    return Tenant(r[0], r[1], r[2], r[3], r[4], r[5])


def _key(r: Sequence[Any]) -> ApiKey:
    return ApiKey(
        key_id=r[0], name=r[1], role=Role(r[2]), tenant_id=r[3], read_only=bool(r[4]),
        principal_type=PrincipalType(r[5]), key_hint=r[6], created_at=r[7], revoked_at=r[8],
    )


def _audit(r: Sequence[Any]) -> AuditEvent:
    return AuditEvent(
        id=r[0], seq=r[1], timestamp=r[2], action=r[3], resource_type=r[4], resource=r[5],
        user=r[6], tenant_id=r[7], diff_object=r[8] or {}, client_ip=r[9], user_agent=r[10],
        request_method=r[11], request_id=r[12], data=r[13], created_at=r[14],
    )


def _batch(r: Sequence[Any]) -> Batch:
    return Batch(
        batch_id=r[0], tenant_id=r[1], title=r[2], metadata=r[3], total_count=r[4],
        created_at=r[5], updated_at=r[6], cancelled_at=r[7],
    )


class PostgresApiMixin:
    if TYPE_CHECKING:

        def _tx(self) -> AbstractContextManager[psycopg.Connection[Any]]: ...
        def _get(
            self, conn: psycopg.Connection[Any], task_id: str, tenant_id: str | None, *,
            lock: bool,
        ) -> TaskOrder: ...
        def _cancel_dependants(
            self, conn: psycopg.Connection[Any], parents: list[str], now: datetime
        ) -> None: ...
        def _lock_open_dependants(
            self, conn: psycopg.Connection[Any], ids: list[str], *, open_roots: bool
        ) -> None: ...
        def _wake(self, channel: str, payload: str) -> None: ...

        conninfo: str

    def async_task_inserter(self) -> AsyncTaskInserter:
        from creep.storage.postgres_async import PostgresAsyncInserter

        return PostgresAsyncInserter(self.conninfo, lambda: self._wake("creep_tasks", ""))

    # -- tenants and keys ----------------------------------------------------------------------

    def tenant_create(self, tenant: Tenant) -> Tenant:
        with self._tx() as conn:
            row = conn.execute(
                f"INSERT INTO tenants ({_TENANT}) VALUES (%s, %s, %s, %s, %s, %s) "
                "ON CONFLICT (tenant_id) DO NOTHING RETURNING tenant_id",
                (tenant.tenant_id, tenant.name, tenant.rate_limit_per_second,
                 tenant.rate_limit_burst, tenant.max_active_tasks, tenant.created_at),
            ).fetchone()
            if row is None:
                raise ConflictError(f"tenant {tenant.tenant_id!r} already exists")
        return tenant

    def tenant_get(self, tenant_id: str) -> Tenant:
        with self._tx() as conn:
            row = conn.execute(
                f"SELECT {_TENANT} FROM tenants WHERE tenant_id = %s", (tenant_id,)
            ).fetchone()
        if row is None:
            raise NotFound("tenant", tenant_id)
        return _tenant(row)

    def tenant_update(self, tenant_id: str, changes: Mapping[str, Any]) -> Tenant:
        """Set the given fields (TENANT_CHANGEABLE) of a tenant; NotFound if there is none."""
        unknown = set(changes) - TENANT_CHANGEABLE
        if unknown:
            raise ValueError(f"not a changeable tenant field: {sorted(unknown)}")
        with self._tx() as conn:
            # Locked: the audit row's old image is the row this update replaces.
            row = conn.execute(
                f"SELECT {_TENANT} FROM tenants WHERE tenant_id = %s FOR UPDATE", (tenant_id,)
            ).fetchone()
            if row is None:
                raise NotFound("tenant", tenant_id)
            pending_writes.before_change(self, conn)  # the REST API's audit row: the old row
            if changes:
                row = conn.execute(
                    f"UPDATE tenants SET {', '.join(f'{name} = %s' for name in changes)} "
                    f"WHERE tenant_id = %s RETURNING {_TENANT}",
                    (*changes.values(), tenant_id),
                ).fetchone()
        assert row is not None
        return _tenant(row)

    def tenant_list(self, *, after: str | None = None, limit: int = 100) -> list[Tenant]:
        with self._tx() as conn:
            rows = conn.execute(
                f"SELECT {_TENANT} FROM tenants WHERE tenant_id > %s "
                "ORDER BY tenant_id LIMIT %s",
                (after or "", limit),
            ).fetchall()
        return [_tenant(r) for r in rows]

    def key_create(self, key: ApiKey, key_hash: str) -> ApiKey:
        with self._tx() as conn:
            self._insert_key(conn, key, key_hash)
        return key

    def _insert_key(self, conn: psycopg.Connection[Any], key: ApiKey, key_hash: str) -> None:
        row = conn.execute(
            f"INSERT INTO api_keys ({_KEY}, key_hash) "
            "SELECT %s, %s, %s, %s, %s, %s, %s, %s, %s, %s "
            "WHERE %s::text IS NULL OR EXISTS (SELECT 1 FROM tenants WHERE tenant_id = %s) "
            "ON CONFLICT DO NOTHING RETURNING key_id",
            (key.key_id, key.name, key.role.value, key.tenant_id, key.read_only,
             key.principal_type.value, key.key_hint, key.created_at, key.revoked_at, key_hash,
             key.tenant_id, key.tenant_id),
        ).fetchone()
        if row is None:
            raise ConflictError("api key cannot be stored (unknown tenant or duplicate key)")

    def key_get(self, key_id: str) -> ApiKey:
        with self._tx() as conn:
            row = conn.execute(
                f"SELECT {_KEY} FROM api_keys WHERE key_id = %s", (key_id,)
            ).fetchone()
        if row is None:
            raise NotFound("api key", key_id)
        return _key(row)

    def key_by_hash(self, key_hash: str) -> ApiKey | None:
        with self._tx() as conn:
            row = conn.execute(
                f"SELECT {_KEY} FROM api_keys WHERE key_hash = %s", (key_hash,)
            ).fetchone()
        return None if row is None else _key(row)

    def key_revoke(self, key_id: str, now: datetime) -> ApiKey:
        with self._tx() as conn:
            row = conn.execute(
                "UPDATE api_keys SET revoked_at = COALESCE(revoked_at, %s) WHERE key_id = %s "
                f"RETURNING {_KEY}",
                (now, key_id),
            ).fetchone()
        if row is None:
            raise NotFound("api key", key_id)
        return _key(row)

    def key_ensure(self, key: ApiKey, key_hash: str) -> tuple[ApiKey, bool]:
        with self._tx() as conn:
            conn.execute("SELECT pg_advisory_xact_lock(hashtext('creep.key_ensure'))")
            row = conn.execute(
                f"SELECT {_KEY} FROM api_keys WHERE key_hash = %s", (key_hash,)
            ).fetchone()
            if row is not None:
                return _key(row), False
            self._insert_key(conn, key, key_hash)
        return key, True

    def commit_pending(self) -> None:
        """A write transaction holding only the pending writes of the current scope (e.g. the
        audit row of a request that changed nothing in this database)."""
        with self._tx():
            pass

    # -- audit ---------------------------------------------------------------------------------

    def _api_insert_audit(self, conn: psycopg.Connection[Any], row: AuditRow) -> None:
        self._api_insert_audits(conn, [row])

    def _api_insert_audits(
        self, conn: psycopg.Connection[Any], rows: Sequence[AuditRow], *,
        created_at: datetime | None = None,
    ) -> None:
        """One statement, one parameter: the rows as one JSON array (orjson, in C) that the
        server unpacks with jsonb_to_recordset. executemany cost the client a round of
        psycopg adaptation per row and the writer one more round trip (the created-task
        query) per batch. With `created_at`, only the rows whose resource is a task created
        at that instant (by this transaction: a replay creates nothing) are written."""
        if not rows:
            return
        records = audit_records(rows)
        if created_at is None:
            conn.execute(_AUDIT_INSERT.format(where=""), (records,))
        else:
            conn.execute(_AUDIT_INSERT.format(where=_AUDIT_CREATED), (records, created_at))

    def _api_created_now(
        self, conn: psycopg.Connection[Any], task_ids: Sequence[str], now: datetime
    ) -> set[str]:
        """Which of these tasks were created at `now` (by the open transaction)."""
        return {str(r[0]) for r in conn.execute(
            "SELECT task_id FROM tasks WHERE task_id = ANY(%s::uuid[]) AND created_at = %s",
            (list(task_ids), now),
        )}

    def _api_task_snapshots(
        self, conn: psycopg.Connection[Any], task_ids: Sequence[str]
    ) -> dict[str, dict[str, Any]]:
        """Audit snapshots of many tasks in one query (inside the open transaction)."""
        from creep.ports_api import task_snapshot
        from creep.storage.common import TASK_SELECT
        from creep.storage.postgres_store import _row_to_task

        rows = conn.execute(
            f"SELECT {TASK_SELECT} FROM tasks WHERE task_id = ANY(%s::uuid[])", (list(task_ids),)
        ).fetchall()
        tasks = [_row_to_task(r) for r in rows]
        return {t.task_id: task_snapshot(t) for t in tasks}

    def _api_snapshot(
        self, conn: psycopg.Connection[Any], resource_type: str, resource_id: str
    ) -> dict[str, Any] | None:
        if resource_type == "task":
            from creep.ports_api import task_snapshot

            try:
                return task_snapshot(self._get(conn, resource_id, None, lock=False))
            except NotFound:
                return None
        table, key = SNAPSHOT_TABLES[resource_type]
        cur = conn.execute(f"SELECT * FROM {table} WHERE {key}::text = %s", (resource_id,))
        row = cur.fetchone()
        if row is None or cur.description is None:
            return None
        names = [d.name for d in cur.description]
        return {n: v for n, v in zip(names, row, strict=True) if n not in SECRET_COLUMNS}

    def snapshot(self, resource_type: str, resource_id: str) -> dict[str, Any] | None:
        """What an audit diff records of a resource now (call it outside a pending scope)."""
        with self._tx() as conn:
            return self._api_snapshot(conn, resource_type, resource_id)

    def audit_list(
        self, flt: AuditFilter, *, after: int | None = None, limit: int = 100
    ) -> list[AuditEvent]:
        where: list[str] = ["true"]
        params: list[Any] = []
        for column, value in (
            ("resource_type", flt.resource_type), ("action", flt.action),
            ("principal_uid", flt.principal), ("resource_id", flt.resource_id),
            ("request_id", flt.request_id), ("tenant_id", flt.tenant_id),
        ):
            if value is not None:
                where.append(f"{column} = %s")
                params.append(value)
        if flt.time_from is not None:
            where.append("timestamp >= %s")
            params.append(int(flt.time_from.timestamp() * 1000))
        if flt.time_to is not None:
            where.append("timestamp < %s")
            params.append(int(flt.time_to.timestamp() * 1000))
        if after is not None:
            where.append("seq < %s")
            params.append(after)
        params.append(limit)
        with self._tx() as conn:
            rows = conn.execute(
                f"SELECT {_AUDIT} FROM audit_events WHERE {' AND '.join(where)} "
                "ORDER BY seq DESC LIMIT %s",
                params,
            ).fetchall()
        return [_audit(r) for r in rows]

    # -- batches -------------------------------------------------------------------------------

    def _api_batch_task_count(self, conn: psycopg.Connection[Any], batch_id: str) -> int:
        """How many tasks of this batch exist, in the caller's open transaction."""
        row = conn.execute(
            "SELECT count(*) FROM tasks WHERE batch_id = %s", (batch_id,)
        ).fetchone()
        return int(row[0]) if row else 0

    def _api_insert_batch(self, conn: psycopg.Connection[Any], batch: Batch) -> None:
        # Only with a task of it (see SqliteApiMixin._api_insert_batch).
        conn.execute(
            f"INSERT INTO batches ({_BATCH}) SELECT %s, %s, %s, %s, %s, %s, %s, NULL "
            "WHERE EXISTS (SELECT 1 FROM tasks WHERE batch_id = %s)",
            (batch.batch_id, batch.tenant_id, batch.title, Jsonb(batch.metadata),
             batch.total_count, batch.created_at, batch.updated_at, batch.batch_id),
        )

    def batch_get(self, batch_id: str, tenant_id: str | None = None) -> Batch:
        with self._tx() as conn:
            row = conn.execute(
                f"SELECT {_BATCH} FROM batches WHERE batch_id = %s", (batch_id,)
            ).fetchone()
        if row is None or (tenant_id is not None and row[1] != tenant_id):
            raise NotFound("batch", batch_id)
        return _batch(row)

    def batch_list(
        self, tenant_id: str | None, *, after: str | None = None, limit: int = 100
    ) -> list[Batch]:
        where: list[str] = ["true"]
        params: list[Any] = []
        if tenant_id is not None:
            where.append("tenant_id = %s")
            params.append(tenant_id)
        if after:
            when, last = sortable_cursor(after, micros=False)
            where.append("(created_at, batch_id) < (%s, %s)")
            params.extend([when, last])
        with self._tx() as conn:
            rows = conn.execute(
                f"SELECT {_BATCH} FROM batches WHERE {' AND '.join(where)} "
                "ORDER BY created_at DESC, batch_id DESC LIMIT %s",
                (*params, limit),
            ).fetchall()
        return [_batch(r) for r in rows]

    @staticmethod
    def batch_cursor(batch: Batch) -> str:
        return f"{batch.created_at.isoformat()}/{batch.batch_id}"

    def batch_task_counts(self, batch_id: str, tenant_id: str) -> dict[str, tuple[int, int]]:
        """The batch's tenant's tasks only (see SqliteApiMixin.batch_task_counts)."""
        with self._tx() as conn:
            rows = conn.execute(
                "SELECT status, count(*), coalesce(sum(progress), 0) FROM tasks "
                "WHERE batch_id = %s AND tenant_id = %s GROUP BY status",
                (batch_id, tenant_id),
            ).fetchall()
        return {r[0]: (int(r[1]), int(r[2])) for r in rows}

    def batch_cancel(
        self, batch_id: str, now: datetime, tenant_id: str | None = None
    ) -> tuple[Batch, BatchCancelled]:
        """Cancel the batch and every unfinished task of it in ONE transaction (see the SQLite
        side). The batch row, then the open tasks in task_id order, are locked FOR UPDATE: a
        concurrent claim either ran first (the task is RUNNING: asked to stop) or finds the
        row locked and, once this commits, no longer QUEUED."""
        done = BatchCancelled()
        with self._tx() as conn:
            row = conn.execute(
                "UPDATE batches SET cancelled_at = COALESCE(cancelled_at, %s), updated_at = %s "
                f"WHERE batch_id = %s AND (%s::text IS NULL OR tenant_id = %s) RETURNING {_BATCH}",
                (now, now, batch_id, tenant_id, tenant_id),
            ).fetchone()
            if row is None:
                raise NotFound("batch", batch_id)
            # The RUNNING tasks first, then the open ones with every open task their
            # cancellation cascades to, each in task_id order: a worker finishing a task holds
            # it while it cascades to (or promotes) its dependants, and a cascade or a user's
            # cancel locks them in task_id order too; any other order deadlocked with those.
            conn.execute(
                "SELECT 1 FROM tasks WHERE batch_id = %s AND tenant_id = %s "
                "AND status = 'RUNNING' ORDER BY task_id FOR UPDATE", (batch_id, row[1]))
            self._lock_open_dependants(conn, [r[0] for r in conn.execute(
                "SELECT task_id FROM tasks WHERE batch_id = %s AND tenant_id = %s "
                "AND status IN ('PENDING', 'QUEUED')", (batch_id, row[1]))], open_roots=True)
            tasks = conn.execute(
                "SELECT task_id, tenant_id, status, attempt, cancel_requested FROM tasks "
                "WHERE batch_id = %s AND tenant_id = %s "
                "AND status IN ('PENDING', 'QUEUED', 'RUNNING') ORDER BY task_id FOR UPDATE",
                (batch_id, row[1]),  # the batch's tenant's (batch_task_counts)
            ).fetchall()
            events: list[tuple[Any, ...]] = []
            for task_id, tenant, status, attempt, cancel_requested in tasks:
                if status == "RUNNING":
                    if not cancel_requested:
                        done.requested.append(str(task_id))
                        events.append((task_id, tenant, "cancel_requested", status, status,
                                       attempt))
                else:
                    done.cancelled.append(str(task_id))
                    events.append((task_id, tenant, "cancelled", status, "CANCELLED", attempt))
            if done.cancelled:
                conn.execute(
                    "UPDATE tasks SET status = 'CANCELLED', result_code = 'CANCELLED', "
                    "result_message = 'batch cancelled', finished_at = %s, updated_at = %s, "
                    "task_version = task_version + 1 WHERE task_id = ANY(%s::uuid[])",
                    (now, now, done.cancelled),
                )
            if done.requested:
                conn.execute(
                    "UPDATE tasks SET cancel_requested = true, updated_at = %s, "
                    "task_version = task_version + 1 WHERE task_id = ANY(%s::uuid[])",
                    (now, done.requested),
                )
                conn.execute("SELECT pg_notify('creep_cancel', t) FROM unnest(%s::text[]) t",
                             (done.requested,))
            if events:
                conn.execute(
                    "INSERT INTO task_events (task_id, tenant_id, event_type, from_status, "
                    "to_status, attempt, payload, created_at) SELECT e.*, %s, %s FROM unnest("
                    "%s::uuid[], %s::text[], %s::text[], %s::text[], %s::text[], %s::integer[]) e",
                    (Jsonb({"reason": "batch cancelled", "batch_id": batch_id}), now,
                     *([e[i] for e in events] for i in range(6))),
                )
            if done.cancelled:
                self._cancel_dependants(conn, done.cancelled, now)
        for task_id in done.requested:
            self._wake("creep_cancel", task_id)
        return _batch(row), done

    # -- limits --------------------------------------------------------------------------------

    def _api_lock_tenant(self, conn: psycopg.Connection[Any], tenant_id: str) -> None:
        """Serialise quota decisions per tenant until commit: the next transaction's count
        (READ COMMITTED, a fresh snapshot per statement) sees this one's rows."""
        conn.execute(
            "SELECT pg_advisory_xact_lock(hashtext('creep.quota.' || %s))", (tenant_id,)
        )

    def _api_active_tasks(self, conn: psycopg.Connection[Any], tenant_id: str) -> int:
        """The tenant's unfinished tasks: one range of task_queue_active (status, tenant_id)
        per status. A single `status IN (...)` matches the index's predicate, so PostgreSQL
        drops it from the index condition and reads the whole index (every tenant's)."""
        row = conn.execute(
            "SELECT (SELECT count(*) FROM task_queue WHERE status = 'PENDING' "
            "AND tenant_id = %(t)s) + (SELECT count(*) FROM task_queue WHERE status = 'QUEUED' "
            "AND tenant_id = %(t)s) + (SELECT count(*) FROM task_queue WHERE status = 'RUNNING' "
            "AND tenant_id = %(t)s)",
            {"t": tenant_id},
        ).fetchone()
        return int(row[0]) if row else 0

    def _api_any_exists(self, conn: psycopg.Connection[Any], task_ids: Sequence[str]) -> bool:
        row = conn.execute(
            "SELECT 1 FROM tasks WHERE task_id = ANY(%s::uuid[]) LIMIT 1", (list(task_ids),)
        ).fetchone()
        return row is not None

    def rate_take(self, bucket: str, rate: float, burst: int, now: datetime) -> float:
        """One statement: refill by elapsed time, take a token if there is one. Shared by every
        API process on this database; 0.0 if granted, else seconds until a token is due."""
        with self._tx() as conn:
            row = conn.execute(
                """INSERT INTO rate_buckets AS b (bucket, tokens, updated_at, granted)
                VALUES (%(b)s, %(burst)s - 1, %(now)s, true)
                ON CONFLICT (bucket) DO UPDATE SET
                    tokens = CASE WHEN {r} >= 1 THEN {r} - 1 ELSE {r} END,
                    granted = {r} >= 1,
                    updated_at = greatest(b.updated_at, %(now)s)
                RETURNING tokens, granted""".replace("{r}", _REFILL),
                {"b": bucket, "burst": float(burst), "now": now, "rate": rate},
            ).fetchone()
        if row is None or row[1]:
            return 0.0
        return (1.0 - float(row[0])) / rate if rate > 0 else 3600.0

    # -- operations ----------------------------------------------------------------------------

    def ping(self, timeout: float) -> int:
        """The schema version over a fresh connection that gives up after `timeout` seconds,
        so a dead database answers quickly instead of waiting for the pool."""
        try:
            with psycopg.connect(
                self.conninfo, connect_timeout=max(1, round(timeout)), autocommit=True
            ) as conn:
                conn.execute(f"SET statement_timeout = {int(timeout * 1000)}")
                row = conn.execute("SELECT max(version) FROM schema_migrations").fetchone()
        except psycopg.Error as exc:
            raise StorageError(f"database is not reachable: {exc}") from exc
        return int(row[0] or 0) if row else 0

    def queue_depth(self) -> list[tuple[str, int, int]]:
        with self._tx() as conn:
            rows = conn.execute(
                "SELECT status, least(priority / 10, 9), count(*) FROM task_queue "
                "GROUP BY 1, 2"
            ).fetchall()
        return [(r[0], int(r[1]), int(r[2])) for r in rows]

    def task_status_counts(
        self, tenant_id: str | None, *, deleted: bool = False
    ) -> dict[str, int]:
        """How many tasks are in each status (of one tenant, or of all): those not deleted,
        as task_list lists them, or (`deleted`) those in the recycle bin."""
        where, params = status_counts_where(tenant_id, deleted, "%s")
        with self._tx() as conn:
            rows = conn.execute(
                f"SELECT status, count(*) FROM tasks WHERE {where} GROUP BY status", params
            ).fetchall()
        return {r[0]: int(r[1]) for r in rows}


def audit_records(rows: Sequence[AuditRow]) -> str:
    """Audit rows as the one JSON array that _AUDIT_INSERT (and the task insert that writes
    them itself) unpacks."""
    return orjson.dumps([
        {"id": row.id, "timestamp": row.timestamp_ms, "action": row.action,
         "resource_type": row.resource_type, "resource": row.resource,
         "resource_id": str(row.resource.get("identifier", "")), "principal": row.user,
         "principal_uid": str(row.user.get("uid", "")), "tenant_id": row.tenant_id,
         "diff_object": row.diff_object, "client_ip": row.client_ip,
         "user_agent": row.user_agent, "request_method": row.request_method,
         "request_id": row.request_id, "data": row.data, "created_at": row.created_at}
        for row in rows
    ]).decode()


_AUDIT_COLUMNS = (
    "id, timestamp, action, resource_type, resource, resource_id, principal, principal_uid, "
    "tenant_id, diff_object, client_ip, user_agent, request_method, request_id, data, "
    "created_at"
)
_AUDIT_TYPES = (
    "id text, timestamp bigint, action text, resource_type text, resource jsonb, "
    "resource_id text, principal jsonb, principal_uid text, tenant_id text, diff_object jsonb, "
    "client_ip text, user_agent text, request_method text, request_id text, data jsonb, "
    "created_at timestamptz"
)
# Rows in the order given, so seq follows it (`ord` only orders them).
_AUDIT_ROWS = (
    f"SELECT {_AUDIT_COLUMNS} FROM ROWS FROM (jsonb_to_recordset(%s::jsonb) AS "
    f"({_AUDIT_TYPES})) WITH ORDINALITY r({_AUDIT_COLUMNS}, ord)"
)
_AUDIT_INSERT = f"INSERT INTO audit_events ({_AUDIT_COLUMNS}) {_AUDIT_ROWS}{{where}} ORDER BY r.ord"
#: Inside the task insert (postgres_store._insert_query), after its `ins` CTE: the rows of
#: the tasks that statement inserted (a replayed key inserts no task, so no audit row).
AUDIT_CREATED_CTE = (
    f"INSERT INTO audit_events ({_AUDIT_COLUMNS}) {_AUDIT_ROWS} "
    "WHERE r.resource_id::uuid IN (SELECT task_id FROM ins) ORDER BY r.ord"
)
_AUDIT_CREATED = (
    " WHERE EXISTS (SELECT 1 FROM tasks t WHERE t.task_id = r.resource_id::uuid "
    "AND t.created_at = %s)"
)
