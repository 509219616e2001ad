"""The asset tables on PostgreSQL: the shared asset SQL with the PostgreSQL dialect."""

from __future__ import annotations

from contextlib import AbstractContextManager
from datetime import datetime
from typing import TYPE_CHECKING, Any

from creep.storage.asset_dialect import PostgresDialect
from creep.storage.asset_store import AssetStoreMixin

if TYPE_CHECKING:
    import psycopg


class PostgresAssets(AssetStoreMixin):
    _adialect = PostgresDialect()

    if TYPE_CHECKING:  # provided by PostgresStore

        def _tx(self) -> AbstractContextManager[psycopg.Connection[Any]]: ...
        def _cancel_dependants(
            self, conn: psycopg.Connection[Any], parents: list[str], now: datetime
        ) -> None: ...

    def _atx(self) -> AbstractContextManager[psycopg.Connection[Any]]:
        return self._tx()

    def _aread(self) -> AbstractContextManager[psycopg.Connection[Any]]:
        return self._tx()

    def _capacity_freed(self, conn: psycopg.Connection[Any]) -> None:
        conn.execute("SELECT pg_notify('creep_tasks', '')")

    def _after_fail_tasks(
        self, conn: psycopg.Connection[Any], task_ids: list[str], now: datetime
    ) -> None:
        self._cancel_dependants(conn, task_ids, now)
