"""SQLite half of the schedule operations: codecs and a BEGIN IMMEDIATE transaction."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import orjson

from creep.domain.errors import ConflictError, IllegalTransition
from creep.domain.task import TaskOrder
from creep.domain.task_spec import TaskSpec
from creep.storage.schedule_sql_base import Conn
from creep.storage.schedules_sql import ScheduleSqlMixin

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class SqliteSchedulesMixin(ScheduleSqlMixin):
    def _conn(self) -> sqlite3.Connection:
        raise NotImplementedError  # provided by SqliteStore

    if TYPE_CHECKING:  # provided by SqliteStore

        def task_create_many(
            self, specs: Sequence[TaskSpec], now: datetime, *,
            within: sqlite3.Connection | None = None,
        ) -> list[TaskOrder]: ...

        def _write(self) -> AbstractContextManager[sqlite3.Connection]: ...

    def _create_tasks_in(
        self, conn: Conn, specs: Sequence[TaskSpec], now: datetime
    ) -> list[TaskOrder]:
        return self.task_create_many(specs, now, within=conn)  # type: ignore[arg-type]

    @contextmanager
    def _sx(self) -> Iterator[Conn]:
        try:
            with self._write() as conn:  # rolled back there on any error
                yield conn  # type: ignore[misc]
        except sqlite3.IntegrityError as exc:
            raise _conflict(exc) from exc

    @contextmanager
    def _sx_read(self) -> Iterator[Conn]:
        yield self._conn()  # type: ignore[misc]

    def _ts(self, value: datetime | None) -> Any:
        if value is None:
            return None
        delta = value - _EPOCH
        return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds

    def _from_ts(self, value: Any) -> datetime | None:
        return None if value is None else _EPOCH + timedelta(microseconds=value)

    def _json(self, value: Any) -> Any:
        return orjson.dumps(value).decode()

    def _from_json(self, value: Any) -> Any:
        return None if value is None else orjson.loads(value)

    def _decimal(self, value: Decimal) -> Any:
        return str(value)

    def _executemany(self, conn: Conn, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        conn.executemany(sql, rows)  # type: ignore[attr-defined]


def _conflict(exc: sqlite3.IntegrityError) -> Exception:
    text = str(exc)
    if "scheduled_tasks.tenant_id" in text or "scheduled_tasks.name" in text:
        return ConflictError("a schedule with this name exists already in this tenant")
    for kind in ("execution", "lock"):
        if f"illegal {kind} transition" in text:
            return IllegalTransition(kind, "?", "?")
    return ConflictError(text)
