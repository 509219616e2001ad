"""Group commit for task creation: concurrent POST /v1/tasks requests are written together,
in one transaction per batch (with every request's audit row and quota check), one batch at a
time. Under load this turns N transactions (and N fsyncs on SQLite, N lock hand-offs
between threads) into one; an idle server writes each request at once.

If a batch fails (an idempotency conflict, a quota refusal, a bad dependency in one of the
requests), its requests are written again one by one, so each gets its own answer and no
request is affected by another's mistake.

A writer thread writes the batches on SQLite. On PostgreSQL, batches of new tasks are awaited
on the event loop instead (storage/postgres_async.py): the thread writes only what that path
leaves (a replayed or conflicting key, a quota check, dependencies, a task id twice in the
batch, a failed batch).
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from creep.api.audit import AuditWrite
from creep.api.limits import QuotaCheck
from creep.api.services import Services
from creep.domain.audit import build_diff
from creep.domain.errors import StorageError, ValidationError, one_order_errors
from creep.domain.task import TaskOrder
from creep.domain.task_spec import TaskSpec
from creep.ports_api import AuditRow, task_snapshot
from creep.storage import pending_writes
from creep.storage.common import initial_status, new_task

MAX_BATCH = 256
#: Event-loop turns the writer thread lets pass, between two batches, for more requests to
#: join (the event loop's writes take what is there: see _drain).
_GATHER_TURNS = 4

#: Seconds a closing batcher waits for the batches still being written.
_CLOSE_WAIT_S = 10.0

log = logging.getLogger("creep.api")


@dataclass(slots=True)
class _Item:
    spec: TaskSpec
    writes: list[pending_writes.PendingWrite]
    future: asyncio.Future[TaskOrder]


class CreateBatcher:
    def __init__(self, svc: Services, max_batch: int = MAX_BATCH) -> None:
        self.svc = svc
        self.max_batch = max_batch
        self._pending: list[_Item] = []
        self._draining = False
        self._drainer: asyncio.Task[None] | None = None
        # One writer: batches are written in order, and writers never contend for the lock.
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="creep-task-writer")
        self._inserter = svc.store.async_task_inserter()
        #: Writes made: one per batch, plus one when the thread answers what the event
        #: loop's write of a batch left (known keys).
        self.batches = 0

    def close(self) -> None:
        self._executor.shutdown(wait=True)

    async def aclose(self) -> None:
        """Let the batches being written finish (bounded), then close the event loop's
        connection and the writer thread."""
        drainer = self._drainer
        if drainer is not None and not drainer.done():
            await asyncio.wait({drainer}, timeout=_CLOSE_WAIT_S)
        if self._inserter is not None:
            await self._inserter.aclose()
        self.close()

    async def create(self, spec: TaskSpec, writes: list[pending_writes.PendingWrite]) -> TaskOrder:
        """Create (or replay) one task with its pending writes; raises what the store raised
        for this request alone."""
        loop = asyncio.get_running_loop()
        item = _Item(spec, writes, loop.create_future())
        self._pending.append(item)
        if not self._draining:
            self._draining = True
            self._drainer = loop.create_task(self._drain())
        return await item.future

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            after_write = False
            while self._pending:
                # The event loop's own writes (PostgreSQL) take what is there: while one
                # batch is in the database, the loop reads the next (measured: waiting for
                # more as below cost them ~10 % requests/s).
                if after_write and self._inserter is None:
                    # Under load (a batch was just written and more came meanwhile), let the
                    # requests already read reach the batcher first: a few loop turns grow
                    # the next batch, and each batch costs the writer and the database about
                    # as much as several of its rows (measured: -10 % server CPU per request,
                    # -30 % PostgreSQL CPU). A lone request is written at once, as before.
                    for _ in range(_GATHER_TURNS):
                        if len(self._pending) >= self.max_batch:
                            break
                        await asyncio.sleep(0)
                after_write = True
                batch = self._pending[: self.max_batch]
                del self._pending[: self.max_batch]
                try:
                    outcomes = await self._write_async(batch) if self._inserter else None
                    if outcomes is None:
                        outcomes = await loop.run_in_executor(self._executor, self._write, batch)
                except BaseException:  # cancelled (the server stopping): nobody is left waiting
                    self._abandon(batch)
                    raise
                for item, outcome in zip(batch, outcomes, strict=True):
                    if item.future.done():
                        continue
                    if isinstance(outcome, BaseException):
                        item.future.set_exception(outcome)
                    else:
                        item.future.set_result(outcome)
        finally:
            self._draining = False

    def _abandon(self, batch: list[_Item]) -> None:
        gone = StorageError("the server stopped before the task was written")
        for item in [*batch, *self._pending]:
            if not item.future.done():
                item.future.set_exception(gone)
        self._pending.clear()

    async def _write_async(self, batch: list[_Item]) -> list[TaskOrder | BaseException] | None:
        """Write the batch from the event loop; None leaves all of it to the thread (it
        holds a write other than its audit rows, a task with dependencies, or the write
        failed: the thread then gives each request its own answer)."""
        assert self._inserter is not None
        if len({item.spec.task_id for item in batch}) < len(batch):
            return None  # a client's task id twice: the thread answers each request
        if any(item.spec.given_id for item in batch):
            return None  # the store checks a client's id (refuse_reused_task_ids)
        now = self.svc.clock.now()
        audits = CreatedTaskAudits(now)
        for item in batch:
            for write in item.writes:
                if not isinstance(write, AuditWrite):  # e.g. a quota check
                    return None
                audits.add(write, item.spec)
        rows = audits.created_task_audits()
        if rows is None:
            return None
        try:
            created = await self._inserter.insert_new(
                [item.spec for item in batch], audits.tasks, now, rows)
        except Exception:
            log.debug("event-loop task insert failed; the writer thread takes the batch",
                      exc_info=True)
            return None
        self.batches += 1
        rest = [item for item in batch if item.spec.task_id not in created]
        if not rest:
            return [created[item.spec.task_id] for item in batch]
        # Keys that exist already (replays, conflicts): the thread's general path answers.
        # (If the write failed after PostgreSQL committed it, the thread finds the whole
        # batch stored and answers each request as a replay of its own task: 200, no copy.)
        loop = asyncio.get_running_loop()
        answers = iter(await loop.run_in_executor(self._executor, self._write, rest))
        return [created[item.spec.task_id] if item.spec.task_id in created else next(answers)
                for item in batch]

    def _write(self, batch: list[_Item]) -> list[TaskOrder | BaseException]:
        self.batches += 1
        if len(batch) > 1:
            try:
                return list(self._write_together(batch))
            except Exception:
                pass
        out: list[TaskOrder | BaseException] = []
        for item in batch:
            try:
                out.extend(self._write_together([item]))
            except ValidationError as exc:  # one request's order: its own field names
                out.append(one_order_errors(exc))
            except Exception as exc:
                out.append(exc)
        return out

    def _write_together(self, batch: list[_Item]) -> list[TaskOrder]:
        now = self.svc.clock.now()
        writes: list[Any] = []
        audits = CreatedTaskAudits(now)
        for item in batch:
            for write in item.writes:
                if isinstance(write, AuditWrite):
                    audits.add(write, item.spec)
                else:
                    writes.append(write)
        # Quota checks lock their tenant until commit (PostgreSQL): taken in tenant order, two
        # nodes' batches of the same tenants cannot wait for each other (a deadlock, broken
        # after a second by failing one of them).
        writes.sort(key=lambda w: w.tenant_id if isinstance(w, QuotaCheck) else "")
        with pending_writes.riding(*writes, audits):
            return self.svc.store.task_create_many([item.spec for item in batch], now)


@dataclass(slots=True)
class CreatedTaskAudits:
    """The audit rows of a batch of creates, written only for the tasks the transaction
    created (a replay is not audited). A task without dependencies is stored exactly as
    `new_task` builds it (the response is built from that too), so its snapshot needs no read
    of the row, and PostgreSQL writes the rows within the task insert statement itself."""

    now: datetime
    writes: list[tuple[AuditWrite, TaskSpec]] = field(default_factory=list)
    #: The tasks created_task_audits built, by id: what an insert of them stores.
    tasks: dict[str, TaskOrder] = field(default_factory=dict)

    def add(self, write: AuditWrite, spec: TaskSpec) -> None:
        self.writes.append((write, spec))

    def created_task_audits(self) -> list[AuditRow] | None:
        """Every row as new_task builds it, for a store to write within its task insert,
        keeping only those of tasks that insert creates (see pending_writes); None when a
        task has dependencies (its initial status is decided in the store)."""
        if any(spec.depends_on for _, spec in self.writes):
            return None
        for write, spec in self.writes:
            task = new_task(spec, initial_status(spec, {}, self.now), self.now)
            self.tasks[spec.task_id] = task
            write.row.diff_object = build_diff(None, task_snapshot(task)).to_dict()
        return [w.row for w, _ in self.writes]

    def apply(self, store: Any, conn: Any) -> bool:
        rows = self.created_task_audits()
        if rows is not None:
            # The insert itself keeps only the rows of tasks this transaction created (one
            # statement, not a query and then an insert).
            store._api_insert_audits(conn, rows, created_at=self.now)
            return True
        ids = [w.resource_id for w, _ in self.writes]
        # A replay changes nothing and is not audited: only a task this very transaction
        # created (created_at == now) is.
        created = store._api_created_now(conn, ids, self.now)
        # Dependencies decide the initial status in the store: read those rows back.
        with_deps = [w.resource_id for w, spec in self.writes
                     if spec.depends_on and w.resource_id in created]
        read = store._api_task_snapshots(conn, with_deps) if with_deps else {}
        kept = []
        for write, spec in self.writes:
            if write.resource_id not in created:
                continue
            snapshot = read.get(write.resource_id)
            if snapshot is None:
                snapshot = task_snapshot(new_task(spec, initial_status(spec, {}, self.now),
                                                  self.now))
            write.row.diff_object = build_diff(None, snapshot).to_dict()
            kept.append(write.row)
        store._api_insert_audits(conn, kept)
        return True
