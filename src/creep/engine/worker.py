"""The worker: claims batches, runs handlers concurrently, completes in batches.

One asyncio loop runs the fetcher, the completer, the lifeline (heartbeats + cancellation)
and, when this worker holds the maintenance lock, the leader-only sweeps. Store calls run on
a small thread pool so database waits overlap handler work.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import heapq
import inspect
import logging
import math
import numbers
import os
import signal
import socket
import threading
import traceback
import uuid
from collections.abc import Callable, Coroutine
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, TypeVar

import orjson

from creep import tracing
from creep.domain.claim_lanes import LANES, MIN_LANE_CLAIM
from creep.domain.clock import Clock, SystemClock
from creep.domain.errors import (
    CreepError,
    NotWritten,
    SafeToResend,
    SchemaOutOfDate,
    StorageError,
    ValidationError,
)
from creep.domain.outcomes import (
    Backoff,
    Fail,
    Outcome,
    OutcomeKind,
    Retry,
    TaskCancelled,
    resolve,
)
from creep.domain.task import TaskOrder
from creep.domain.text import bad_text, find_unwritable, may_be_unwritable
from creep.engine.context import SyncTaskContext, TaskContext
from creep.gc_tuning import BATCH_THRESHOLD, fewer_collections
from creep.ports import ClaimedTask, Completion, LaneFailed, Store

log = logging.getLogger("creep.worker")

Handler = Callable[[Any], Any]
T = TypeVar("T")

MAINTENANCE_LOCK = "creep.maintenance"
#: Shortest claim TTL (seconds), as for remote workers: a claim is renewed every fifth of it,
#: and a shorter one would lapse at the first slow heartbeat.
MIN_CLAIM_TTL = 1.0
#: Longest a completion waits for an in-flight claim to ride along with (seconds).
_RIDE_ALONG_WAIT = 0.5
#: Longest a stopping worker waits, past its grace, for the handlers it cancelled to end
#: (seconds) before it gives their tasks back anyway: `creep up` kills a worker 2 s after its
#: grace, and a handler ignoring its cancellation must not keep the requeue from being written.
UNWIND_WAIT = 1.0


@dataclass(slots=True)
class WorkerSettings:
    concurrency: int = 10
    #: Most tasks claimed by one statement; defaults to the concurrency (half of it for a
    #: worker over HTTP, whose next batch is claimed while the current one runs).
    batch_size: int | None = None
    claim_ttl: float = 30.0
    #: How often held claims are renewed; defaults to a fifth of the claim TTL.
    heartbeat_interval: float | None = None
    poll_interval: float = 1.0
    #: Completions are written together; a batch waits at most this long.
    flush_interval: float = 0.002
    shutdown_grace: float = 30.0
    maintenance: bool = True
    maintenance_interval: float = 1.0
    timeout_grace: float = 5.0
    backoff: Backoff = field(default_factory=Backoff)
    #: The garbage collector's first-generation threshold while the worker runs (see
    #: gc_tuning.py); None leaves the interpreter's settings alone.
    gc_threshold: int | None = BATCH_THRESHOLD
    #: PostgreSQL only: 2 runs each claim of 64 tasks or more (a claim is up to the
    #: concurrency, or batch_size: so concurrency >= 64) with the completions riding along as
    #: two concurrent transactions, each preferring its own half of the asset pool
    #: (domain/claim_lanes.py; README "Workers"). 1: one transaction.
    claim_lanes: int = 1

    def validate(self) -> None:
        """Refuse settings that make no sense (naming each), rather than a busy loop or a
        crash in the middle of a claim: NaN and infinity included."""
        errors: list[tuple[str, str]] = []

        def number(name: str, value: object, low: float, *, above: bool = False,
                   optional: bool = False) -> None:
            if value is None and optional:
                return
            sign = ">" if above else ">="
            if (isinstance(value, bool) or not isinstance(value, int | float)
                    or not math.isfinite(value) or value < low or (above and value == low)):
                errors.append((name, f"must be a finite number of seconds {sign} {low:g}"))

        def count(name: str, value: object, *, optional: bool = False) -> None:
            if value is None and optional:
                return
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                errors.append((name, "must be an integer >= 1" + (" (or None)" if optional else "")))

        count("concurrency", self.concurrency)
        count("batch_size", self.batch_size, optional=True)
        number("claim_ttl", self.claim_ttl, MIN_CLAIM_TTL)
        number("heartbeat_interval", self.heartbeat_interval, 0, above=True, optional=True)
        beat = self.heartbeat_interval
        if (beat is not None and not {"claim_ttl", "heartbeat_interval"} & {f for f, _ in errors}
                and beat >= self.claim_ttl):
            errors.append(("heartbeat_interval", "must be > 0 and shorter than claim_ttl"))
        number("poll_interval", self.poll_interval, 0, above=True)
        number("flush_interval", self.flush_interval, 0)
        number("shutdown_grace", self.shutdown_grace, 0)
        if not isinstance(self.maintenance, bool):
            errors.append(("maintenance", "must be true or false"))
        # 0 would sweep back to back: a busy loop on the loop and the database.
        number("maintenance_interval", self.maintenance_interval, 0, above=True)
        number("timeout_grace", self.timeout_grace, 0)
        if not isinstance(self.backoff, Backoff):
            errors.append(("backoff", "must be a creep.Backoff"))
        count("gc_threshold", self.gc_threshold, optional=True)
        if self.claim_lanes not in (1, LANES) or isinstance(self.claim_lanes, bool):
            errors.append(("claim_lanes", f"must be 1 or {LANES}"))
        if errors:
            raise ValidationError(errors)


@dataclass(slots=True)
class _Running:
    claimed: ClaimedTask
    ctx: TaskContext
    job: asyncio.Task[Any] | None = None
    stop_reason: str | None = None  # "timeout" | "cancel" | "shutdown" | "lost" | "lease_revoked"
    #: The shutdown wrote this run's outcome without waiting for it (its handler ignored
    #: cancellation): what the run itself ends with later is not written again.
    given_back: bool = False


class Worker:
    def __init__(
        self,
        store: Store,
        handlers: dict[str, Handler],
        settings: WorkerSettings | None = None,
        *,
        clock: Clock | None = None,
        worker_id: str | None = None,
    ) -> None:
        self.store = store
        self.handlers = dict(handlers)
        self.settings = settings or WorkerSettings()
        self.settings.validate()
        if self.settings.claim_lanes > 1 and store.dialect != "postgres":
            raise ValidationError.single(
                "claim_lanes", "needs PostgreSQL (SQLite writes one transaction at a time)")
        # By default a database worker claims up to its concurrency at a time (the fetcher
        # claims again once a quarter of it is free): on PostgreSQL, fewer and larger claims
        # cost the server less per task than half-size ones (a no-op drain ran ~10% faster).
        # An HTTP worker claims half its concurrency, so that its next batch is on its way
        # over the network while the current one runs.
        self._batch = self.settings.batch_size or (
            self.settings.concurrency if store.dialect in ("sqlite", "postgres")
            else max(1, self.settings.concurrency // 2))
        if self.settings.claim_lanes > 1 and self._batch < MIN_LANE_CLAIM:
            log.warning("claim_lanes=%d has no effect: claims of %d tasks are under %d "
                        "(raise concurrency or batch_size)", self.settings.claim_lanes,
                        self._batch, MIN_LANE_CLAIM)
        self.clock = clock or SystemClock()
        self.worker_id = worker_id or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.stats: dict[str, int] = {"claimed": 0, "completed": 0, "lost": 0}
        self._running: dict[str, _Running] = {}
        self._buffer: list[Completion] = []
        # Completion batches taken from the buffer but not committed yet (they may promote
        # dependants or requeue retries, so a burst run must not stop while one is in flight).
        self._writing = 0
        self._db = ThreadPoolExecutor(2, thread_name_prefix="creep-db")
        self._sync_pool = ThreadPoolExecutor(
            self.settings.concurrency, thread_name_prefix="creep-handler"
        )
        # Sync handlers stopped (timed out, cancelled) whose threads still run: they keep
        # their slots until they return, or the next task would wait for a pool thread while
        # its own deadline ran.
        self._stuck_threads = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping = False
        #: When the stop was asked for (loop time): writes that fail while stopping are
        #: retried until shutdown_grace past it, then given up (_flush).
        self._stop_at = float("inf")
        self._leader_token: str | None = None
        # Handler deadlines: one heap and one timer armed for the earliest, instead of a loop
        # timer per task. Entries of finished tasks are dropped lazily (see _arm_deadlines).
        self._deadlines: list[tuple[float, str, _Running]] = []
        self._deadline_timer: asyncio.TimerHandle | None = None
        self._deadline_at = float("inf")
        self._is_async: dict[str, bool] = {}
        self._flushing: asyncio.Task[None] | None = None
        # A claim round under way: on SQLite, completions wait for it and ride with the next
        # one (SQLite runs one write transaction at a time, so a batch written beside the claim
        # would only queue behind it). PostgreSQL writes both at once on two connections: two
        # backends, two cores. Except for tasks that took asset leases: settling them locks
        # the asset rows a claim takes capacity from, so the two transactions would only
        # wait for each other; written together, the claim sees the capacity the settle
        # frees and each asset row is written once (LeaseBrokerMixin._leases_batched).
        self._claiming = False
        #: The last claim round failed (a storage error): no evidence of an empty queue.
        self._claim_failed = False
        self._ride_along = store.dialect == "sqlite"
        #: The buffer holds a completion of a leased task (cleared when a batch takes it).
        self._leased_waiting = False
        # The first unexpected error of a background loop (completer, lifeline, maintainer):
        # the worker stops as for SIGTERM, then run() raises it (see _watch).
        self._crash: BaseException | None = None

    # -- public --------------------------------------------------------------------------------

    def request_stop(self) -> None:
        """Begin a graceful shutdown (thread-safe)."""
        loop = self._loop
        if loop is None:
            self._stopping = True
        else:
            loop.call_soon_threadsafe(self._begin_stop)

    async def run(self, *, burst: bool = False, install_signals: bool = False) -> dict[str, int]:
        """Work until stopped (or, with burst=True, until nothing is runnable now)."""
        if self.settings.gc_threshold is None:
            return await self._run(burst, install_signals)
        with fewer_collections(self.settings.gc_threshold):
            return await self._run(burst, install_signals)

    async def _run(self, burst: bool, install_signals: bool) -> dict[str, int]:
        if not self.handlers:
            raise ValidationError.single("handlers", "a worker needs at least one handler")
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._slot_freed = asyncio.Event()
        self._flush_now = asyncio.Event()
        self._claimed_event = asyncio.Event()
        self._lifeline_now = asyncio.Event()
        self._stopped = asyncio.Event()
        # Set by a second stop request (SIGTERM/SIGINT again): stop waiting, for running
        # tasks as for writes that fail.
        self._hurry = asyncio.Event()
        if self._stopping:
            self._stopped.set()
            self._stop_at = self._loop.time()
        if install_signals and threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._loop.add_signal_handler(sig, self._begin_stop)
        subscribe = getattr(self.store, "subscribe", None)
        if subscribe is not None:
            subscribe(self._on_notify_threadsafe)
        listener = self.store.listener()
        if listener is not None:
            on_loop = getattr(listener, "start_on_loop", None)
            if on_loop is not None:  # wakes this loop without a thread hand-off
                on_loop(self._loop, self._on_notify)
            else:
                listener.start(self._on_notify_threadsafe)
        background = [
            asyncio.create_task(self._completer(), name="creep-completer"),
            asyncio.create_task(self._lifeline(), name="creep-lifeline"),
        ]
        if self.settings.maintenance:
            background.append(asyncio.create_task(self._maintainer(), name="creep-maintenance"))
        for task in background:
            task.add_done_callback(self._watch)
        log.info("worker %s started: types=%s", self.worker_id, sorted(self.handlers))
        try:
            try:
                await self._fetcher(burst)
                await self._drain()
            except asyncio.CancelledError:
                # Cancelled from outside (asyncio.run on Ctrl-C without install_signals, a
                # TaskGroup, wait_for): a shutdown with no grace. Left RUNNING, the tasks would
                # be charged an attempt once their claims expired, though none failed.
                self._begin_stop()
                self._hurry.set()
                await self._drain(grace=0.0)
                raise
        finally:
            # Their errors were logged and kept by _watch; the cleanup below must still run.
            await _cancel_all(background)
            # A batch the completer was writing when it was cancelled is still in flight
            # (shielded): wait for it, so its tasks are counted and never left RUNNING.
            if self._flushing is not None:
                await asyncio.gather(self._flushing, return_exceptions=True)
            if self._deadline_timer is not None:
                self._deadline_timer.cancel()
            try:
                await self._flush()
            except Exception as exc:
                # Left RUNNING: once their claims expire the rescuer queues them again.
                log.exception(
                    "worker %s: the last %d completions could not be written; their tasks "
                    "run again once their claims expire: %s", self.worker_id,
                    len(self._buffer), ", ".join(
                        f"{c.outcome.task_id} ({c.outcome.kind.value})" for c in self._buffer))
                if self._crash is None:
                    self._crash = exc
            if listener is not None:
                listener.stop()
            unsubscribe = getattr(self.store, "unsubscribe", None)
            if unsubscribe is not None:
                unsubscribe(self._on_notify_threadsafe)
            if install_signals and threading.current_thread() is threading.main_thread():
                for sig in (signal.SIGTERM, signal.SIGINT):
                    self._loop.remove_signal_handler(sig)
            # Waits for store calls still running, a sweep cancelled mid-way among them:
            # only then is the leadership given up (another leader must not sweep beside it).
            self._db.shutdown(wait=True)
            if self._leader_token is not None:
                token, self._leader_token = self._leader_token, None
                with contextlib.suppress(CreepError):
                    await asyncio.to_thread(self.store.lock_release, MAINTENANCE_LOCK, token,
                                            self.clock.now())
            self._sync_pool.shutdown(wait=False, cancel_futures=True)
            log.info("worker %s stopped: %s", self.worker_id, self.stats)
        if self._crash is not None:
            raise self._crash
        return dict(self.stats)

    # -- plumbing ------------------------------------------------------------------------------

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._db, fn, *args)

    def _on_notify_threadsafe(self, channel: str, payload: str) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(self._on_notify, channel, payload)

    def _on_notify(self, channel: str, payload: str) -> None:
        if channel == "creep_cancel":
            if payload in self._running:
                self._lifeline_now.set()
        else:
            self._wake.set()

    def _watch(self, task: asyncio.Task[None]) -> None:
        """A background loop only ends by being cancelled. One that died of an error would
        leave the worker claiming and running tasks whose results are never written (the
        completer) or whose claims lapse under the running handler (the lifeline): stop the
        worker loudly instead, as for SIGTERM, and let run() raise the error."""
        if task.cancelled() or task.exception() is None:
            return
        exc = task.exception()
        log.error("worker %s: %s failed; stopping the worker", self.worker_id,
                  task.get_name(), exc_info=exc)
        if self._crash is None:
            self._crash = exc
        self._begin_stop(again_hurries=False)

    def _begin_stop(self, again_hurries: bool = True) -> None:
        """A stop request (SIGTERM/SIGINT, request_stop). Asked again while stopping, the
        worker stops waiting: running tasks are given back now, failing writes given up."""
        if not self._stopping:
            log.info("worker %s: stop requested, finishing in-flight tasks", self.worker_id)
        elif again_hurries and not self._hurry.is_set():
            log.warning("worker %s: stop requested again, not waiting any longer",
                        self.worker_id)
            self._hurry.set()
        if self._stop_at == float("inf"):
            self._stop_at = asyncio.get_running_loop().time()
        self._stopping = True
        self._stopped.set()
        self._wake.set()
        self._slot_freed.set()  # a fetcher with every slot busy waits on it

    # -- fetching ------------------------------------------------------------------------------

    async def _fetcher(self, burst: bool) -> None:
        s = self.settings
        batch = self._batch
        types = sorted(self.handlers)
        idle_rounds = 0
        while not self._stopping:
            free = s.concurrency - len(self._running) - self._stuck_threads
            if free <= 0 or (free < min(batch, s.concurrency) // 4 and self._running):
                self._slot_freed.clear()
                await self._slot_freed.wait()
                continue
            self._wake.clear()
            want = min(free, batch)
            claimed = await self._claim(types, want)
            if claimed:
                self._start_batch(claimed)
                idle_rounds = 0
            self.stats["claimed"] += len(claimed)
            if len(claimed) == want:
                continue
            if burst:
                if (claimed or self._running or self._buffer or self._writing
                        or self._flushing is not None):
                    # A batch being written may queue follow-ups (dependants, retries).
                    await self._wait_for_progress()
                    continue
                if self._claim_failed:
                    continue  # not an empty queue: the store failed (and was waited out)
                # Nothing claimable: let maintenance promote what is due, then look once more.
                # Done only after a round that promoted and rescued nothing found nothing.
                moved = await self._maintain_once(force=True)
                idle_rounds = 0 if moved else idle_rounds + 1
                if idle_rounds >= 2:
                    return
                continue
            # Idle: a NOTIFY (or a stop) sets _wake; the timer is the polling guarantee. Awaited
            # directly, not through wait_for's extra task: fewer loop turns before the claim.
            poll = asyncio.get_running_loop().call_later(s.poll_interval, self._wake.set)
            try:
                await self._wake.wait()
            finally:
                poll.cancel()

    async def _claim(self, types: list[str], want: int) -> list[ClaimedTask]:
        self._claiming = True
        self._claim_failed = False
        self._claimed_event.clear()
        claim = asyncio.ensure_future(self._claim_traced(types, want))
        try:
            return await asyncio.shield(claim)
        except asyncio.CancelledError:
            # The worker is cancelled: its claim's thread runs on and may commit. Wait for
            # it and give back what it took, unstarted and uncharged.
            with contextlib.suppress(Exception):
                self._give_back(await claim)
            raise
        finally:
            self._claiming = False
            self._claimed_event.set()

    async def _claim_traced(self, types: list[str], want: int) -> list[ClaimedTask]:
        if tracing.tracer() is None:
            return await self._claim_round(types, want)
        with tracing.span("creep.claim", {"creep.worker_id": self.worker_id,
                                          "creep.task_types": list(types),
                                          "creep.max_tasks": want}) as current:
            claimed = await self._claim_round(types, want)
            current.set_attribute("creep.claimed", len(claimed))
            return claimed

    async def _claim_round(self, types: list[str], want: int) -> list[ClaimedTask]:
        """Claim up to `want` tasks. On SQLite, and with completions of leased tasks, the
        completions waiting in the buffer ride along in the same transaction when the store
        offers that (one commit instead of two per round)."""
        s = self.settings
        combined = getattr(self.store, "task_complete_and_claim", None)
        lanes = s.claim_lanes
        # Completions of leased tasks ride along too: the claim never waits for an asset lock
        # (it skips locked assets), so settling and leasing in one transaction cannot deadlock.
        # Plain results on PostgreSQL do not: a claim alone commits without waiting for its
        # WAL flush, and the completer writes them at the same time on its own connection,
        # so the server's work for a round runs on two backends (one combined transaction,
        # durable and serial, drained 10-11k tasks/s against 15-17k, measured alternately).
        # With claim lanes, a claim goes this way even alone, to run in lanes too.
        rides = bool(self._buffer) and (self._ride_along or self._leased_waiting or lanes > 1)
        if combined is None or not (rides or (lanes > 1 and want >= MIN_LANE_CLAIM)):
            return await self._claim_alone(types, want)
        if lanes > 1:
            combined = functools.partial(combined, lanes=lanes)
        batch, self._buffer, self._leased_waiting = _once_per_claim(self._buffer), [], False
        try:
            with tracing.span("creep.complete", {"creep.tasks": len(batch),
                                                 "creep.with_claim": True}):
                _, claimed = await self._call(
                    combined, batch, self.worker_id, types, want, self.clock.now(), s.claim_ttl
                )
        except LaneFailed as exc:
            # Some claim lanes committed (their completions are written, their claims are
            # to run), others did not: their completions go back to the buffer, where the
            # next claim takes them (or, if none comes soon, the completer).
            log.warning("claiming with %d completions: %s (%d completions to write again)",
                        len(batch), exc, len(exc.unwritten))
            self._buffer[:0] = exc.unwritten
            self._flush_now.set()
            self.stats["completed"] += len(batch) - len(exc.unwritten)
            self._slot_freed.set()
            return exc.claimed
        except CreepError as exc:
            # Not written: the completer takes them again (with its retries), and the claim
            # goes alone, as it would without this shortcut.
            log.warning("completing %d tasks with the claim failed: %s", len(batch), exc)
            self._buffer[:0] = batch
            self._flush_now.set()
            return await self._claim_alone(types, want)
        except BaseException:
            self._buffer[:0] = batch
            self._flush_now.set()
            raise
        self.stats["completed"] += len(batch)
        self._slot_freed.set()
        return list(claimed)

    async def _claim_alone(self, types: list[str], want: int) -> list[ClaimedTask]:
        """A claim on its own. A transient storage failure (the database restarting, a
        deadlock victim) is logged and retried on the next round after a short pause."""
        try:
            return await self._call(
                self.store.task_claim, self.worker_id, types, want, self.clock.now(),
                self.settings.claim_ttl,
            )
        except StorageError as exc:  # transient; a refused claim (bad key, schema) still stops it
            if isinstance(exc, SchemaOutOfDate):
                raise
            log.warning("claiming failed, trying again shortly: %s", exc)
            self._claim_failed = True
            await asyncio.sleep(min(self.settings.poll_interval, 0.2))
            # The wake-up this claim answered (a NOTIFY) was spent on it: claim again now,
            # not at the next poll.
            self._wake.set()
            return []

    def _give_back(self, claimed: list[ClaimedTask]) -> None:
        now = self.clock.now()
        for c in claimed:
            outcome = Outcome(c.task_id, c.claim_token, OutcomeKind.REQUEUE,
                              message="worker stopped before the task started")
            self._buffer.append(Completion(outcome, resolve(
                outcome, attempt=c.attempt, max_attempts=c.max_attempts, now=now,
                backoff=self.settings.backoff)))

    async def _wait_for_progress(self) -> None:
        self._slot_freed.clear()
        self._flush_now.set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._slot_freed.wait(), 0.05)

    # -- running handlers ----------------------------------------------------------------------

    def _start_batch(self, batch: list[ClaimedTask]) -> None:
        """Start a handler run per claimed task. What is the same for the whole batch (the
        clock, whether spans are recorded) is looked up once, not per task."""
        loop = asyncio.get_running_loop()
        execute: Callable[[_Running], Coroutine[Any, Any, object]] = (
            self._execute_run if tracing.tracer() is None else self._execute_traced)
        now, loop_now = self.clock.now(), loop.time()
        running, deadlines, create_task = self._running, self._deadlines, loop.create_task
        earliest = self._deadline_at
        for claimed in batch:
            task_id = claimed.task_id
            earlier = running.get(task_id)
            if earlier is not None:
                # Claimed again while a run of an earlier claim goes on: that claim expired
                # and was rescued (its attempt is charged). The old run is stale: stop it
                # before the new one takes its place, or its results would be refused and
                # its stop (lost) would hit the live run.
                self._stop_run(earlier, "lost")
            run = _Running(claimed, TaskContext(self, claimed))
            running[task_id] = run
            run.job = create_task(execute(run), name=f"creep-task-{task_id}")
            when = loop_now + max(0.0, (claimed.deadline_at - now).total_seconds())
            heapq.heappush(deadlines, (when, task_id, run))
            earliest = min(earliest, when)
        # Pruned here too, not only when the timer is re-armed: in a steady drain each batch's
        # deadlines come after the armed one, so the entries of finished tasks (each keeping
        # its run, context and asyncio task alive) would pile up until their deadlines passed,
        # growing memory and the garbage collector's work with every task.
        if earliest < self._deadline_at or _needs_pruning(deadlines, running):
            self._arm_deadlines(loop)

    def _arm_deadlines(self, loop: asyncio.AbstractEventLoop) -> None:
        """(Re)arm the one deadline timer for the earliest live entry of the heap."""
        heap = self._deadlines
        if _needs_pruning(heap, self._running):
            # Mostly finished tasks: rebuild instead of letting them pile up until their
            # deadlines (default timeouts are minutes long).
            heap[:] = [e for e in heap if self._running.get(e[1]) is e[2]]
            heapq.heapify(heap)
        while heap and self._running.get(heap[0][1]) is not heap[0][2]:
            heapq.heappop(heap)
        if self._deadline_timer is not None:
            self._deadline_timer.cancel()
            self._deadline_timer = None
        if not heap:
            self._deadline_at = float("inf")
            return
        self._deadline_at = heap[0][0]
        self._deadline_timer = loop.call_at(self._deadline_at, self._on_deadline)

    def _on_deadline(self) -> None:
        loop = asyncio.get_running_loop()
        self._deadline_timer = None
        now = loop.time()
        heap = self._deadlines
        while heap and heap[0][0] <= now:
            _, task_id, run = heapq.heappop(heap)
            if self._running.get(task_id) is run:
                self._stop_task(task_id, "timeout")
        self._deadline_at = float("inf")
        self._arm_deadlines(loop)

    def _stop_task(self, task_id: str, reason: str, token: str | None = None) -> None:
        """Stop the task's current run; with `token`, only if that run holds this claim
        (an answer about an earlier claim of the task must not stop a newer run)."""
        run = self._running.get(task_id)
        if run is None or (token is not None and run.claimed.claim_token != token):
            return
        self._stop_run(run, reason)

    def _stop_run(self, run: _Running, reason: str) -> None:
        if run.stop_reason is not None:
            return
        run.stop_reason = reason
        run.ctx._mark_cancelled(reason)
        if run.job is not None:
            run.job.cancel()

    async def _execute_traced(self, run: _Running) -> None:
        claimed = run.claimed
        task = _decoded(claimed)
        # One span per run, a child of the submitter's span (constraints.traceparent).
        with tracing.span(
            "creep.task.run",
            {"creep.task_id": claimed.task_id, "creep.task_type": claimed.task_type,
             "creep.attempt": claimed.attempt, "creep.worker_id": self.worker_id},
            traceparent=None if task is None else task.constraints.get(tracing.TRACEPARENT),
        ) as current:
            outcome = await self._execute_run(run)
            current.set_attribute("creep.outcome", outcome.kind.value if outcome else "lost")

    async def _execute_run(self, run: _Running) -> Outcome | None:
        claimed = run.claimed  # its TaskOrder is decoded only if the handler reads ctx.task
        task_id, token, task_type = claimed.task_id, claimed.claim_token, claimed.task_type
        handler = self.handlers[task_type]
        is_async = self._is_async.get(task_type)
        if is_async is None:
            is_async = self._is_async[task_type] = _is_async_handler(handler)
        outcome: Outcome | None
        try:
            if is_async:
                value = await handler(run.ctx)
            else:
                value = await self._run_sync(handler, run.ctx)
                if inspect.isawaitable(value):
                    # A sync callable that made a coroutine (a decorator around an async
                    # function): the work is in the coroutine, which runs on this loop.
                    value = await value
            if run.stop_reason is not None:
                # A sync handler cannot be interrupted; it finished after it was stopped.
                outcome = self._stopped_outcome(run)
            else:
                outcome = _value_outcome(task_id, token, value)
        except asyncio.CancelledError as exc:
            if run.stop_reason is not None:
                outcome = self._stopped_outcome(run)
            else:
                current = asyncio.current_task()
                if current is not None and current.cancelling():
                    raise  # this run is being cancelled (the worker's own shutdown path)
                # Raised by the handler itself (a sub-task it awaited was cancelled): an
                # error like any other, or the task would stay RUNNING until its claim expired.
                outcome = _error_outcome(task_id, token, exc)
        except TaskCancelled as exc:
            outcome = (
                self._stopped_outcome(run) if run.stop_reason not in (None, "cancel")
                else Outcome(task_id, token, OutcomeKind.CANCELLED, message=storable(str(exc)))
            )
        except BaseException as exc:
            if is_async and isinstance(exc, KeyboardInterrupt):
                # May be a real Ctrl-C landing in an async handler (the main thread): the
                # process's, not the task's. A pool thread's can only be its handler's own.
                raise
            # A stopped handler that raises while it unwinds (its cleanup failed) still ends
            # as it was stopped: timed out, cancelled, requeued at shutdown. A handler's
            # sys.exit(), GeneratorExit or a library's own BaseException is its task's error,
            # not the worker's: the worker and its other tasks go on (left uncaught, the run
            # would end without an outcome and its task stay RUNNING).
            outcome = (self._stopped_outcome(run) if run.stop_reason is not None
                       else _raised_outcome(task_id, token, exc))
        finally:
            if self._running.get(task_id) is run:  # not a newer claim's run of the task
                del self._running[task_id]
            self._slot_freed.set()
        if run.given_back:
            return outcome
        if outcome is None:
            self.stats["lost"] += 1
            return None
        resolution = resolve(
            outcome, attempt=claimed.attempt, max_attempts=claimed.max_attempts,
            now=self.clock.now(), backoff=self.settings.backoff,
        )
        self._buffer.append(Completion(outcome, resolution))
        if claimed.leased:
            self._leased_waiting = True
        batch = self._batch
        if len(self._buffer) >= batch or len(self._buffer) >= 1000 or len(self._buffer) == 1:
            self._flush_now.set()
        return outcome

    async def _run_sync(self, handler: Handler, ctx: TaskContext) -> Any:
        """A sync handler in a pool thread (with the current span: its own spans nest in it).
        If its run is stopped, the thread cannot be: its slot stays taken until it returns."""
        loop = asyncio.get_running_loop()
        job = self._sync_pool.submit(
            contextvars.copy_context().run, handler, SyncTaskContext(ctx, loop))
        try:
            return await asyncio.wrap_future(job)
        except asyncio.CancelledError:
            if not job.cancel():  # started: it runs on until the handler returns
                self._stuck_threads += 1
                job.add_done_callback(lambda done: _call_soon(
                    loop, functools.partial(self._thread_returned, done)))
            raise

    def _thread_returned(self, done: Future[Any]) -> None:
        self._stuck_threads -= 1
        if not done.cancelled() and done.exception() is None:
            result = done.result()
            if inspect.iscoroutine(result):  # made but never to run: no "never awaited"
                result.close()
        self._slot_freed.set()

    def _stopped_outcome(self, run: _Running) -> Outcome | None:
        task_id, token = run.claimed.task_id, run.claimed.claim_token
        reason = run.stop_reason
        if reason == "timeout":
            return Outcome(
                task_id, token, OutcomeKind.TIMED_OUT,
                message=f"handler exceeded timeout_ms={_timeout_ms(run.claimed)}",
            )
        if reason == "cancel":
            return Outcome(task_id, token, OutcomeKind.CANCELLED, message="cancelled")
        if reason == "shutdown":
            return Outcome(
                task_id, token, OutcomeKind.REQUEUE,
                message="worker shut down before the task finished",
            )
        if reason == "lease_revoked":
            return Outcome(
                task_id, token, OutcomeKind.RETRY, code="LEASE_REVOKED",
                message="a lease of the task was revoked (its asset was banned or archived)",
            )
        return None  # "lost": another process owns the task now

    # -- completing ----------------------------------------------------------------------------

    async def _completer(self) -> None:
        while True:
            await self._flush_now.wait()
            self._flush_now.clear()
            # Let completions that land in the same few milliseconds share one transaction.
            await asyncio.sleep(self.settings.flush_interval)
            if self._ride_along or self._leased_waiting:
                await self._await_claim_round()
                if not self._buffer:
                    continue
            # Shielded: cancelling the completer at shutdown must not abandon a batch whose
            # write is under way; run() awaits it.
            self._flushing = asyncio.ensure_future(self._flush())
            await asyncio.shield(self._flushing)
            self._flushing = None

    async def _await_claim_round(self) -> None:
        """On SQLite (or with completions of leased tasks), while the fetcher's claim is in
        flight, completions wait for it: when it returns, the fetcher takes them along with
        its next claim, one transaction for both (two would only queue behind each other for
        the one writer, or for the asset rows). Bounded, so a slow claim or a full worker
        never holds results back for long."""
        cap = 2 * self._batch
        while self._claiming and len(self._buffer) < cap:
            try:
                await asyncio.wait_for(self._claimed_event.wait(), _RIDE_ALONG_WAIT)
            except TimeoutError:
                return
            await asyncio.sleep(0)  # the fetcher resumes first and may take the buffer

    async def _flush(self) -> None:
        while self._buffer:
            batch, self._buffer, self._leased_waiting = _once_per_claim(self._buffer), [], False
            delay = 0.05
            self._writing += 1
            try:
                while True:
                    try:
                        with tracing.span("creep.complete", {"creep.tasks": len(batch)}):
                            await self._call(
                                self.store.task_complete_many, batch, self.clock.now())
                        break
                    except CreepError as exc:
                        if self._give_up_writing():
                            # Stopping, and past the grace (or asked twice): the caller
                            # reports what it could not write (run()'s last flush).
                            self._buffer[:0] = batch
                            raise
                        log.warning("completing %d tasks failed, retrying: %s", len(batch), exc)
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(self._hurry.wait(), delay)
                        delay = min(delay * 2, 2.0)
                    except BaseException:
                        # Not a storage failure (a bug, a cancellation): keep the batch for
                        # the last flush at shutdown, which tries once more.
                        self._buffer[:0] = batch
                        raise
            finally:
                self._writing -= 1
            self.stats["completed"] += len(batch)
            self._slot_freed.set()

    def _give_up_writing(self) -> bool:
        """A storage outage is waited out, but not past a stop: a worker asked to stop
        retries failing writes until shutdown_grace after the request (or a second
        request), then exits with an error instead of never exiting."""
        if not self._stopping:
            return False
        if self._hurry.is_set():
            return True
        return asyncio.get_running_loop().time() >= self._stop_at + self.settings.shutdown_grace

    async def _drain(self, grace: float | None = None) -> None:
        """Graceful stop: wait up to the grace period, then give back what is unfinished."""
        if self._running:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + (self.settings.shutdown_grace if grace is None else grace)
            while self._running and loop.time() < deadline and not self._hurry.is_set():
                self._slot_freed.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(
                        self._slot_freed.wait(), max(0.0, deadline - loop.time())
                    )
            for task_id in list(self._running):
                self._stop_task(task_id, "shutdown")
            jobs = [r.job for r in self._running.values() if r.job is not None]
            if jobs:
                await asyncio.wait(jobs, timeout=UNWIND_WAIT)
            # Handlers still running (a sync one, an async one ignoring its cancellation) are
            # given back without waiting for them: what they do later is refused by the claim
            # token, which the requeue takes from them.
            for run in list(self._running.values()):
                run.given_back = True
                outcome = self._stopped_outcome(run)
                if outcome is not None:
                    self._buffer.append(
                        Completion(outcome, resolve(
                            outcome, attempt=run.claimed.attempt,
                            max_attempts=run.claimed.max_attempts, now=self.clock.now(),
                            backoff=self.settings.backoff,
                        ))
                    )
                self._running.pop(run.claimed.task_id, None)
        with contextlib.suppress(CreepError):
            # Given up while stopping (an outage): the batch is back in the buffer, where
            # run()'s last flush tries it once more and reports what it cannot write.
            await self._flush()

    # -- lifeline: heartbeats and cancellation -------------------------------------------------

    async def _lifeline(self) -> None:
        s = self.settings
        interval = s.heartbeat_interval or s.claim_ttl / 5
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._lifeline_now.wait(), interval)
            self._lifeline_now.clear()
            claims = [(tid, r.claimed.claim_token) for tid, r in self._running.items()]
            if not claims:
                continue
            sent = dict(claims)
            try:
                result = await self._call(
                    self.store.task_heartbeat, self.worker_id, claims, self.clock.now(),
                    s.claim_ttl,
                )
            except CreepError as exc:
                log.warning("heartbeat failed: %s", exc)
                continue
            # The answers are about the claims sent: a task claimed again meanwhile has a
            # newer run they must not stop.
            for task_id in result.cancel_requested:
                self._stop_task(task_id, "cancel", sent.get(task_id))
            self._tell_revoked(result.revoked, sent)
            for task_id in result.lost:
                run = self._running.get(task_id)
                if run is None or run.claimed.claim_token != sent.get(task_id):
                    # That run ended while the heartbeat was under way (its result written,
                    # the task no longer RUNNING): nothing to abandon, nothing lost.
                    continue
                log.warning("task %s: claim lost; abandoning it", task_id)
                self._stop_run(run, "lost")

    async def _call_outlasting(self, fn: Callable[..., T], *args: Any) -> T | None:
        """A handler's own heartbeat or progress report: a storage failure (a connection reset,
        the database restarting) is waited out and the call tried again, as the background
        heartbeat does, rather than raised into the handler (which would charge the task an
        attempt). Past the claim TTL the claim has lapsed anyway: None, and the background
        heartbeat tells the run it was lost."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.claim_ttl
        delay = 0.05
        while True:
            try:
                return await self._call(fn, *args)
            except StorageError as exc:
                if isinstance(exc, SchemaOutOfDate) or loop.time() + delay > deadline:
                    log.warning("%s failed, giving up: %s", fn.__name__, exc)
                    return None
                log.warning("%s failed, trying again: %s", fn.__name__, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)

    async def call_resending(self, fn: Callable[..., T], *args: Any) -> T:
        """A handler's own write (ctx.charge, ctx.report_event, ...), which must not be
        written twice: sent again only when the store says a resend cannot write it twice
        (SafeToResend: an HTTP worker's 429 or refused connection, NotWritten, or any
        failure of a ledger entry or asset event it sends with its id), with backoff, until
        the claim TTL; then, or on any other failure, raised into the handler. Given up
        after a send that may have been written, it is a StorageError saying the outcome is
        unknown, never NotWritten."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.claim_ttl
        delay = 0.05
        maybe_written = False
        name = getattr(getattr(fn, "func", fn), "__name__", "call")  # a partial's function
        while True:
            try:
                return await self._call(fn, *args)
            except SafeToResend as exc:
                maybe_written = maybe_written or not isinstance(exc, NotWritten)
                wait = max(delay, exc.retry_after or 0.0)
                if loop.time() + wait > deadline:
                    if maybe_written:
                        raise StorageError(
                            f"{name}: no answer after sending it "
                            f"for {self.settings.claim_ttl:g}s (the claim TTL); whether it "
                            f"was written is unknown (written at most once): {exc}"
                        ) from exc
                    raise
                log.warning("%s failed, trying again in %.2fs: %s", name, wait, exc)
                await asyncio.sleep(wait)
                delay = min(delay * 2, 1.0)

    async def heartbeat_one(self, ctx: TaskContext) -> None:
        result = await self._call_outlasting(
            self.store.task_heartbeat, self.worker_id, [(ctx.task_id, ctx.claim_token)],
            self.clock.now(), self.settings.claim_ttl,
        )
        if result is None:
            return
        if result.lost:
            self._stop_task(ctx.task_id, "lost", ctx.claim_token)
            ctx._mark_cancelled("lost")
        elif result.cancel_requested:
            self._stop_task(ctx.task_id, "cancel", ctx.claim_token)
        else:
            self._tell_revoked(result.revoked, {ctx.task_id: ctx.claim_token})

    # Asset leases (README "Assets, leases, ledger and asset events"): a lease revoked under
    # a running handler lands in ctx.revoked_lease_ids; unless the task's constraints say
    # on_lease_revoked="continue", the handler is stopped and the task retries LEASE_REVOKED.
    # Revocations the handler caused itself (ctx.report_event) are already known: no stop.
    def _tell_revoked(self, revoked: dict[str, list[str]], sent: dict[str, str]) -> None:
        for task_id, lease_ids in revoked.items():
            run = self._running.get(task_id)
            if run is None or run.claimed.claim_token != sent.get(task_id):
                continue
            new = [x for x in lease_ids if x not in run.ctx.revoked_lease_ids]
            run.ctx.revoked_lease_ids.extend(new)
            task = _decoded(run.claimed)
            keep_running = task is not None and task.constraints.get("on_lease_revoked") == "continue"
            if new and not keep_running:
                self._stop_run(run, "lease_revoked")

    async def progress_one(self, ctx: TaskContext, percent: int, message: str | None) -> None:
        held = await self._call_outlasting(
            self.store.task_progress, ctx.task_id, ctx.claim_token, percent, storable(message),
            self.clock.now(),
        )
        if held is None:
            return
        if not held:
            self._stop_task(ctx.task_id, "lost", ctx.claim_token)
            ctx._mark_cancelled("lost")

    # -- leader-only maintenance ---------------------------------------------------------------

    async def _maintainer(self) -> None:
        # Imported here: maintainer.py imports MAINTENANCE_LOCK from this module.
        from creep.engine.maintainer import log_failure, retry_pause

        interval, failures = self.settings.maintenance_interval, 0
        while True:
            await asyncio.sleep(retry_pause(interval, failures))
            try:
                await self._maintain_once()
                failures = 0
            except Exception as exc:
                # Not the worker's own work: a bad sweep (a bug, a row it cannot read) is
                # logged and tried again later, not a crash of every worker that leads.
                failures += 1
                log_failure(log, exc, retry_pause(interval, failures))

    async def _maintain_once(self, force: bool = False) -> int:
        """One maintenance round if this worker leads; returns how many tasks it made
        runnable again (promoted or rescued)."""
        if not (self.settings.maintenance or force):
            return 0
        s = self.settings
        ttl = max(5.0, s.maintenance_interval * 5)
        now = self.clock.now()
        if self._leader_token is not None:
            held = await self._call(
                self.store.lock_renew, MAINTENANCE_LOCK, self.worker_id, self._leader_token,
                ttl, now,
            )
            if not held:
                self._leader_token = None
        if self._leader_token is None:
            self._leader_token = await self._call(
                self.store.lock_acquire, MAINTENANCE_LOCK, self.worker_id, ttl, now,
                "task maintenance: promote due, rescue expired claims, time out overdue",
            )
        if self._leader_token is None:
            return 0
        report = await self._call(self.store.task_maintain, now, s.backoff, s.timeout_grace)
        # Assets: cooling sweep and NO_RESOURCE for hinted tasks past their deadline.
        swept = await self._call(self.store.asset_maintain, now)
        if swept.total():
            log.info("asset maintenance: cooled=%d no_resource=%d", swept.cooled,
                     swept.no_resource)
        if report.total():
            log.info(
                "maintenance: promoted=%d rescued=%d timed_out=%d dead_lettered=%d",
                report.promoted, report.rescued, report.timed_out, report.dead_lettered,
            )
        # Cooled assets may let hinted tasks run too.
        return report.promoted + report.rescued + swept.cooled


async def _cancel_all(tasks: list[asyncio.Task[None]]) -> None:
    """Cancel `tasks` and wait until they have ended, cancelling again any that go on.
    Python 3.11's wait_for swallows a cancellation that arrives just as the wait it wraps
    completes (the background loops wait on events through it): a single cancel could
    leave the completer or the lifeline looping, and the worker never stopping."""
    for task in tasks:
        task.cancel()
    pending = set(tasks)
    while pending:
        _, pending = await asyncio.wait(pending, timeout=0.1)
        for task in pending:
            task.cancel()
    for task in tasks:  # retrieved, so none is logged as never retrieved
        if not task.cancelled():
            task.exception()


def _once_per_claim(batch: list[Completion]) -> list[Completion]:
    """The batch with one entry per claim, the first (a batch written back to the buffer is
    put before what came since). Two entries for one claim would be applied as the backend
    picks: SQLite the first, PostgreSQL's `UPDATE ... FROM unnest` either."""
    claims = {(c.outcome.task_id, c.outcome.claim_token) for c in batch}
    if len(claims) == len(batch):
        return batch
    seen: set[tuple[str, str]] = set()
    once = []
    for c in batch:
        claim = (c.outcome.task_id, c.outcome.claim_token)
        if claim not in seen:
            seen.add(claim)
            once.append(c)
    log.warning("%d completions for claims already in the batch were dropped",
                len(batch) - len(once))
    return once


def _is_async_handler(handler: Handler) -> bool:
    """Whether calling `handler` makes a coroutine: an async function, also behind
    functools.partial, or an object whose __call__ is async (inspect.iscoroutinefunction
    sees neither). A sync callable that returns an awaitable is awaited too (_execute_run)."""
    target: Any = handler
    while isinstance(target, functools.partial):
        target = target.func
    return inspect.iscoroutinefunction(target) or inspect.iscoroutinefunction(
        type(target).__call__ if callable(target) else None)


def _needs_pruning(heap: list[tuple[float, str, _Running]], running: dict[str, _Running]) -> bool:
    """Mostly entries of finished tasks: rebuilt once it is twice its live size, so
    the cost per task stays constant."""
    return len(heap) > 64 and len(heap) > 2 * len(running)


def _decoded(claimed: ClaimedTask) -> TaskOrder | None:
    """The claimed order, decoded; None when its stored row does not decode. The worker's own
    reads go through here so a bad row fails its run (the handler's read raises inside the
    run) instead of killing the job outside it and leaking the slot."""
    try:
        return claimed.task
    except Exception:
        log.exception("task %s: its stored order does not decode", claimed.task_id)
        return None


def _timeout_ms(claimed: ClaimedTask) -> int | str:
    task = _decoded(claimed)
    return "?" if task is None else task.timeout_ms


def _asked_outcome(task_id: str, token: str, value: object) -> Outcome | None:
    """The outcome a Retry or Fail (returned or raised) asks for; None for anything else.
    Raises TypeError for a delay that is no number of seconds (the handler's error)."""
    if isinstance(value, Retry):
        return Outcome(task_id, token, OutcomeKind.RETRY, message=storable(_text(value.message)),
                       retry_delay=_seconds(value.delay))
    if isinstance(value, Fail):
        return Outcome(task_id, token, OutcomeKind.FAILED, code=storable(_text(value.code)),
                       message=storable(_text(value.message)))
    return None


def _seconds(delay: object) -> float | None:
    if delay is None:
        return None
    if isinstance(delay, bool) or not isinstance(delay, numbers.Real | Decimal):
        raise TypeError(f"Retry(delay=...) takes a number of seconds, not {type(delay).__name__}")
    return float(delay)


def _text(value: object) -> str | None:
    """Handler-given text as text: a number passed as a message is written as one."""
    return value if value is None or isinstance(value, str) else _str(value)


def _str(value: object) -> str:
    """str(value), or a stand-in when its __str__ fails (it must not fail the run)."""
    try:
        return str(value)
    except Exception:
        return f"<{type(value).__name__}: str() failed>"


def _value_outcome(task_id: str, token: str, value: Any) -> Outcome:
    try:
        asked = _asked_outcome(task_id, token, value)
    except TypeError as exc:
        return _error_outcome(task_id, token, exc)
    if asked is not None:
        return asked
    try:
        result_json = orjson.dumps(value, default=_json_default)
    except TypeError as exc:
        return _error_outcome(task_id, token, TypeError(f"result is not JSON-serialisable: {exc}"))
    if may_be_unwritable(result_json, value) and (bad := find_unwritable(value, "result")) is not None:
        # PostgreSQL stores no NUL: written as is, it would fail the whole completion batch;
        # nested too deep, every page of tasks holding it would fail.
        return _error_outcome(task_id, token, ValueError(f"{bad[0]}: {bad[1]}"))
    return Outcome(task_id, token, OutcomeKind.SUCCEEDED, result=value, result_json=result_json)


def storable(text: str | None) -> str | None:
    """Handler-given text (an error, a message) as every backend can store it: NUL and lone
    surrogates written out as escapes instead of failing the completion batch."""
    if text is None or bad_text(text) is None:
        return text
    return text.replace("\x00", "\\x00").encode("utf-8", "backslashreplace").decode("utf-8")


def _json_default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _call_soon(loop: asyncio.AbstractEventLoop, callback: Callable[[], None]) -> None:
    """From another thread; nothing once the worker's loop is closed."""
    with contextlib.suppress(RuntimeError):
        loop.call_soon_threadsafe(callback)


def _raised_outcome(task_id: str, token: str, exc: BaseException) -> Outcome:
    """What a handler's exception asks for: Retry and Fail as they say, anything else a retry
    with the error recorded."""
    try:
        return _asked_outcome(task_id, token, exc) or _error_outcome(task_id, token, exc)
    except TypeError as bad:
        return _error_outcome(task_id, token, bad)


def _error_outcome(task_id: str, token: str, exc: BaseException) -> Outcome:
    return Outcome(
        task_id, token, OutcomeKind.RETRY,
        message=storable(f"{type(exc).__name__}: {_str(exc)}"),
        error=storable("".join(traceback.format_exception(exc))[-8000:]),
    )
