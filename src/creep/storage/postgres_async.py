"""New tasks written from the API server's event loop on PostgreSQL (psycopg's async
connection), instead of from a writer thread.

The writer thread (api/create_batcher.py) spends most of a group commit waiting for the server.
Each reply then made it wait again for the GIL, held by the event loop busy with the next
requests; the event loop, in turn, had nothing to do while one batch held every connected
client. Awaited on the loop itself, a batch in PostgreSQL's hands overlaps with the HTTP
work of the next one, and a reply costs no thread hand-off. BEGIN, the insert (the rows, their
creation events and the audit rows, one statement: see postgres_store._insert_statement) and
COMMIT travel in one pipeline: one round trip per batch.

Only new tasks without dependencies come this way. A key that exists already inserts nothing
(the statement skips it, with its audit row): its request goes back to the general path,
which replays or refuses it, as the thread's pipelined path does. The rest of the batch is
committed, and created, either way.

The pool holds one connection per server process, on top of the store's own pool.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any

import psycopg
from psycopg.pq import TransactionStatus
from psycopg_pool import AsyncConnectionPool

from creep.domain.errors import StorageError
from creep.domain.task import TaskOrder, TaskStatus
from creep.domain.task_spec import TaskSpec
from creep.ports_api import AuditRow

#: Batches are written one after the other (the batcher's order), so one connection serves.
_POOL_SIZE = 1
#: Seconds a batch waits for the connection (e.g. while PostgreSQL restarts) before the
#: batcher gives it to the writer thread, whose pool has its own wait and error answers.
_CONNECT_TIMEOUT_S = 5.0
#: After a connection failure (PostgreSQL down or restarting, max_connections reached), the
#: writer thread takes every batch for this long: one batch per pause waits for a
#: connection, not each one.
_PAUSE_AFTER_FAILURE_S = 10.0

log = logging.getLogger("creep.storage")


class PostgresAsyncInserter:
    """Inserts new tasks and their audit rows from one event loop. Made per loop (an API
    server's lifespan); its connection opens on first use and closes with `aclose`."""

    def __init__(self, conninfo: str, wake: Callable[[], None]) -> None:
        self._conninfo = conninfo
        self._wake = wake  # the store's in-process wake-up of workers
        self._pool: AsyncConnectionPool[Any] | None = None
        self._paused_until = 0.0
        self._closed = False

    async def insert_new(
        self, specs: Sequence[TaskSpec], tasks: Mapping[str, TaskOrder], now: datetime,
        audits: Sequence[AuditRow],
    ) -> dict[str, TaskOrder]:
        """Insert these new tasks (none with dependencies; `tasks`: each spec's new_task at
        `now`, as its audit row was built from) with the audit rows of those inserted, in
        one committed transaction; returns the tasks inserted, by id. A task
        whose idempotency key exists already (or comes again later in `specs`) is left out.
        Task ids must be unique in `specs` (the caller's check). Raises StorageError when
        nothing was written, or when the outcome is unknown (the connection broke after
        COMMIT was sent: the general path then finds what was committed and replays it)."""
        from creep.storage.postgres_store import _insert_statement

        if self._closed:
            raise StorageError("the event loop's task inserter is closed")
        if time.monotonic() < self._paused_until:
            raise StorageError("the event loop's task inserter is paused after a failure")
        query, params = _insert_statement(specs, tasks, set(), now, audits)
        pool = await self._opened()
        try:
            async with pool.connection(timeout=_CONNECT_TIMEOUT_S) as conn:
                try:
                    async with conn.pipeline():
                        await conn.execute("BEGIN")
                        cur = await conn.execute(query, params)
                        await conn.execute("COMMIT")
                    inserted = [str(row[0]) for row in await cur.fetchall()]
                finally:
                    # A failed statement left the transaction open (its COMMIT was refused).
                    if conn.info.transaction_status != TransactionStatus.IDLE:
                        await conn.execute("ROLLBACK")
        except (psycopg.OperationalError, OSError) as exc:  # the connection, not the data
            if self._paused_until == 0.0:
                log.warning("writing new tasks from the event loop failed (%s); the writer "
                            "thread takes them, trying again every %.0f s",
                            exc, _PAUSE_AFTER_FAILURE_S)
            self._paused_until = time.monotonic() + _PAUSE_AFTER_FAILURE_S
            raise StorageError(str(exc)) from exc
        except psycopg.Error as exc:
            raise StorageError(str(exc)) from exc
        if self._paused_until:
            log.warning("writing new tasks from the event loop works again")
            self._paused_until = 0.0
        created = {task_id: tasks[task_id] for task_id in inserted}
        if any(t.status is TaskStatus.QUEUED for t in created.values()):
            self._wake()  # workers in this process (the statement sent the NOTIFY)
        return created

    async def _opened(self) -> AsyncConnectionPool[Any]:
        if self._closed:
            raise StorageError("the event loop's task inserter is closed")
        if self._pool is None:
            pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
                self._conninfo, min_size=_POOL_SIZE, max_size=_POOL_SIZE, open=False,
                configure=_configure, kwargs={"autocommit": True}, name="creep-async-insert",
            )
            await pool.open(wait=False)
            self._pool = pool
        return self._pool

    async def aclose(self) -> None:
        self._closed = True
        if self._pool is not None:
            await self._pool.close()
            self._pool = None


async def _configure(conn: psycopg.AsyncConnection[Any]) -> None:
    """The session the store's own connections have (postgres_store._configure): ids come
    back as text, UTC, UTF-8."""
    from creep.storage.postgres_store import SESSION_SETTINGS, register_uuid_as_text

    register_uuid_as_text(conn)
    await conn.execute(SESSION_SETTINGS)
