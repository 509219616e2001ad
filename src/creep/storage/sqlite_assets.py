"""The asset tables on SQLite: the shared asset SQL with the SQLite dialect."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from datetime import datetime
from typing import TYPE_CHECKING

from creep.storage.asset_dialect import SqliteDialect
from creep.storage.asset_store import AssetStoreMixin


class SqliteAssets(AssetStoreMixin):
    _adialect = SqliteDialect()

    if TYPE_CHECKING:  # provided by SqliteStore

        def _write(self) -> AbstractContextManager[sqlite3.Connection]: ...
        def _conn(self) -> sqlite3.Connection: ...
        def _cancel_dependants(
            self, conn: sqlite3.Connection, parents: list[str], now_us: int
        ) -> None: ...

    def _atx(self) -> AbstractContextManager[sqlite3.Connection]:
        return self._write()

    @contextmanager
    def _aread(self) -> Iterator[sqlite3.Connection]:
        yield self._conn()

    def _after_fail_tasks(
        self, conn: sqlite3.Connection, task_ids: list[str], now: datetime
    ) -> None:
        self._cancel_dependants(conn, task_ids, self._adialect.ts(now) or 0)
