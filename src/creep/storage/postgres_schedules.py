"""PostgreSQL half of the schedule operations: codecs, row locks and a pooled transaction."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import errors as pg_errors
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool

from creep.domain.errors import ConflictError, IllegalTransition, StorageError
from creep.domain.task import TaskOrder
from creep.domain.task_spec import TaskSpec
from creep.storage import pending_writes
from creep.storage.common import BATCH_PURGE_LOCK
from creep.storage.schedule_sql_base import Conn, Cursor
from creep.storage.schedules_sql import ScheduleSqlMixin


class _PgConn:
    """Adapts a psycopg connection to the `?` placeholders the shared SQL uses."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self.raw = conn

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Cursor:
        return self.raw.execute(sql.replace("?", "%s").encode(), list(params))  # type: ignore[return-value]


class PostgresSchedulesMixin(ScheduleSqlMixin):
    pool: ConnectionPool[Any]
    _for_update = " FOR UPDATE"
    _true = "true"
    # Holding the lock row shared until commit: a takeover (which updates that row) waits for
    # this write to commit, and a write after a takeover sees the new token and is refused.
    _for_share = " FOR SHARE"

    if TYPE_CHECKING:  # provided by PostgresStore

        def task_create_many(
            self, specs: Sequence[TaskSpec], now: datetime, *,
            within: psycopg.Connection[Any] | None = None,
        ) -> list[TaskOrder]: ...

    def _create_tasks_in(
        self, conn: Conn, specs: Sequence[TaskSpec], now: datetime
    ) -> list[TaskOrder]:
        assert isinstance(conn, _PgConn)
        return self.task_create_many(specs, now, within=conn.raw)

    def _sx_adapt(self, raw: Any) -> Conn:
        return raw if isinstance(raw, _PgConn) else _PgConn(raw)

    def _sx_driver(self, conn: Conn) -> Any:
        return conn.raw if isinstance(conn, _PgConn) else conn

    @contextmanager
    def _sx(self) -> Iterator[Conn]:
        try:
            with self.pool.connection() as conn, conn.transaction():
                yield _PgConn(conn)
                pending_writes.flush(self, conn)  # the REST API's audit row, same transaction
        except pg_errors.UniqueViolation as exc:
            raise ConflictError("a schedule with this name exists already in this tenant") from exc
        except pg_errors.CheckViolation as exc:
            for kind in ("execution", "lock"):
                if f"illegal {kind} transition" in str(exc):
                    raise IllegalTransition(kind, "?", "?") from exc
            raise StorageError(str(exc)) from exc
        except psycopg.Error as exc:
            raise StorageError(str(exc)) from exc

    def _hold_batches(self, conn: Conn, batches: list[str]) -> None:
        # The lock task_retry takes shared (batch_purge_lock) before it reads the mark.
        for batch in sorted(batches):
            conn.execute(f"SELECT pg_advisory_xact_lock({BATCH_PURGE_LOCK})", (batch,))

    def _ts(self, value: datetime | None) -> Any:
        return value

    def _from_ts(self, value: Any) -> datetime | None:
        return value  # type: ignore[no-any-return]

    def _json(self, value: Any) -> Any:
        return Jsonb(value)

    def _from_json(self, value: Any) -> Any:
        return value

    def _executemany(self, conn: Conn, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        raw = conn.raw  # type: ignore[attr-defined]
        with raw.cursor() as cur:
            cur.executemany(sql.replace("?", "%s").encode(), [list(r) for r in rows])
