"""The multi-node backend: PostgreSQL through psycopg 3 and a connection pool.

Claims take `FOR UPDATE SKIP LOCKED` in one statement that also writes the `started` events;
completions are one `UPDATE ... FROM unnest(...)` fenced by claim token, events included.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import functools
import re
import select
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from operator import itemgetter
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import orjson
import psycopg
from psycopg import errors as pg_errors
from psycopg.adapt import Loader
from psycopg.pq import TransactionStatus
from psycopg.types.json import Jsonb, set_json_dumps, set_json_loads
from psycopg_pool import ConnectionPool

from creep.domain.claim_lanes import (
    LANES,
    MIN_LANE_CLAIM,
    lane_of,
    lane_shares,
    lane_token,
)
from creep.domain.errors import (
    ConflictError,
    CreepError,
    IllegalTransition,
    NotFound,
    StorageError,
    TaskDeleted,
    ValidationError,
    VersionConflict,
)
from creep.domain.events import TaskEvent
from creep.domain.ids import is_uuid
from creep.domain.lock import check_lock_ttl
from creep.domain.outcomes import Backoff, Outcome, OutcomeKind, Resolution
from creep.domain.task import RETRYABLE_FROM, TaskOrder, TaskStatus, check_transition
from creep.domain.task_spec import TaskSpec, retries_allowed
from creep.ports import (
    ClaimedTask,
    Completion,
    HeartbeatResult,
    LaneFailed,
    Listener,
    MaintenanceReport,
    TaskFilter,
)
from creep.ports_api import AuditRow
from creep.storage import pending_writes
from creep.storage.asset_pages import AssetPagesMixin  # REST API pages
from creep.storage.common import (
    BATCH_PURGE_LOCK,
    BATCH_PURGING,
    CANCELLED_WHILE_ENDING,
    PLAIN_COLUMNS,
    TASK_COLUMNS,
    TASK_SELECT,
    UPDATABLE_FIELDS,
    Unchanged,
    bind_replayed_dependencies,
    check_dependencies,
    check_known_schema,
    check_retry_dependencies,
    check_soft_delete,
    dumps,
    given_task_ids,
    initial_status,
    is_plain,
    json_default,
    load_migrations,
    migration_failed,
    new_task,
    plan_replays,
    refuse_purging_batch,
    refuse_reused_task_ids,
    rescue,
    resolution_payload,
    set_replays_aside,
    sortable_cursor,
)
from creep.storage.metrics_store import PostgresMetricsMixin  # /metrics
from creep.storage.pg_copy import copy_blocks
from creep.storage.postgres_api import AUDIT_CREATED_CTE, PostgresApiMixin, audit_records
from creep.storage.postgres_artifacts import PostgresArtifactsMixin  # artifacts + HTTP workers
from creep.storage.postgres_assets import PostgresAssets
from creep.storage.postgres_schedules import PostgresSchedulesMixin  # schedules

_MIGRATION_LOCK = 0x63726565  # "cree"
_MIGRATION_ATTEMPTS = 5
#: The claim must walk tasks_runnable in (priority DESC, created_at) order and stop after
#: `limit` rows. Right after a bulk enqueue (no statistics yet) the planner instead picked a
#: bitmap scan of every queued row plus a sort: 130 ms per 500-task claim on 30k queued rows,
#: growing with the queue. Bitmap and sequential scans are ruled out for this transaction
#: only; JIT is off because OLTP statements never repay its compile time. The update then
#: finds the picked rows by `ctid = ANY(ARRAY(...))`, a TID scan: the picking step locked
#: each row's latest version, so its address holds until the claim commits, and no second
#: primary-key lookup per row is needed (one was before: joined to the CTE instead, the
#: planner merge-joined it against a walk of the whole primary key, every task ever stored).
#: A row updated by another transaction after the claim's snapshot was taken is locked at
#: its new version, which that snapshot cannot see: the update skips it, and it is claimed
#: by a later claim rather than this one (never twice: the lock and the status test hold).
_CLAIM_SETTINGS = {"enable_bitmapscan": "off", "enable_seqscan": "off", "jit": "off"}
#: The completion and the heartbeat join their batch to tasks by primary key. Hash and merge
#: joins would read all of tasks (or every RUNNING row through tasks_running) to meet a batch
#: of 500; they are ruled out for that one statement, and put back for what follows.
_PROBE_SETTINGS = {**_CLAIM_SETTINGS, "enable_hashjoin": "off", "enable_mergejoin": "off"}


def _set_local(settings: dict[str, str]) -> str:
    """One statement (so it can be pipelined with the statement it prepares for)."""
    return "SELECT " + ", ".join(f"set_config('{k}', '{v}', true)" for k, v in settings.items())


_CLAIM_PLANNER = _set_local(_CLAIM_SETTINGS)
#: A plain claim (task_claim) commits without waiting for its WAL flush: the one durability
#: trade creep makes. If the PostgreSQL server crashes before the flush (at most a few
#: wal_writer_delay later), the claim is lost as a whole: its tasks are QUEUED again and run
#: again, as after a worker's crash (delivery is at-least-once either way), and the
#: handler's completion is refused by the claim-token fence. Any later synchronous commit
#: (a completion, a submit) flushes the claim with it, so nothing that follows a claim is
#: durable without it. Transaction-local (SET LOCAL): completions, retries, submits and
#: claims that carry other writes (a completion, a queued audit row, leases and their
#: charges or a budget failure: asset_dialect.durable_commit) stay synchronous, and
#: nothing reaches the next user of the pooled connection. It takes one fsync (a few ms on
#: a busy disk) off the pickup latency of every task. The cost besides re-runs: a lost
#: claim's started events may have been read, and its transaction id (task_events.txid, the
#: stream cursor) can be handed out again after the restart (README, "Storage").
_CLAIM_COMMIT = "SET LOCAL synchronous_commit = off"

_PROBE_PLANNER = _set_local(_PROBE_SETTINGS)
#: Connections a pool needs for claim lanes: the worker's two database threads (one runs
#: lane 0, the other completions or heartbeats), a lane thread per further lane, and one to
#: spare. A smaller pool runs combined claims as one transaction.
_LANE_MIN_POOL = LANES + 2
_IDX = {name: i for i, name in enumerate(TASK_COLUMNS)}
_ACTIVE_STATUSES = frozenset({"PENDING", "QUEUED", "RUNNING"})  # what task_queue holds
_EVENT_COLUMNS = "task_id, tenant_id, event_type, from_status, to_status, attempt, payload, created_at"


#: Of the given ids a transaction has just inserted as new tasks, those that ledger entries
#: or leases name already: a task deleted by retention (refuse_reused_task_ids). Read in
#: the insert's transaction, after it: a sweep that deleted the old task before the insert
#: has committed by then (the insert waited for it on the primary key), so no sweep can
#: slip between check and insert. Through the by-task indexes.
_REUSED_IDS = (
    "SELECT g.id FROM unnest(%s::uuid[]) AS g(id) WHERE EXISTS (SELECT 1 FROM "
    "ledger_entries l WHERE l.task_id = g.id) OR EXISTS (SELECT 1 FROM leases s "
    "WHERE s.task_id = g.id)"
)

class _UuidAsText(Loader):
    load = staticmethod(codecs.decode)  # type: ignore[assignment]  # C, as _JsonAsOrjson


class _BinaryUuidAsText(Loader):
    format = psycopg.pq.Format.BINARY

    def load(self, data: Any) -> str:
        return str(uuid.UUID(bytes=bytes(data)))


class _JsonAsOrjson(Loader):
    """Text json/jsonb straight to orjson: the row maker then calls orjson.loads itself, not a
    Python method that calls it (a claimed row has seven jsonb columns; this halves the
    client CPU of decoding a claim)."""

    load = staticmethod(orjson.loads)  # type: ignore[assignment]


#: Every connection's session: UTC, and UTF-8 whatever the URL's client_encoding (binary
#: COPY, pg_copy.py, sends text as UTF-8 bytes, which the server reads in the client encoding).
#: No JIT: no statement of creep's repays its compilation, and a plan that ruled out
#: sequential scans (index_plans) is costed past jit_above_cost whenever one remains, so a
#: 15 ms read of leases took 460 ms (its connection's first JIT compilation).
SESSION_SETTINGS = ("SELECT set_config('TimeZone', 'UTC', false), "
                    "set_config('client_encoding', 'UTF8', false), set_config('jit', 'off', false)")


#: libpq TCP settings every connection gets unless the URL names them.
_TCP_DEFAULTS = {"keepalives": "1", "keepalives_idle": "15", "keepalives_interval": "5",
                 "keepalives_count": "3", "tcp_user_timeout": "30000"}


def register_uuid_as_text(conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any]) -> None:
    conn.adapters.register_loader("uuid", _UuidAsText)
    conn.adapters.register_loader("uuid", _BinaryUuidAsText)


def _configure(conn: psycopg.Connection[Any]) -> None:
    register_uuid_as_text(conn)
    set_json_loads(orjson.loads, conn)  # binary jsonb (a version byte, then the text)
    conn.adapters.register_loader("json", _JsonAsOrjson)
    conn.adapters.register_loader("jsonb", _JsonAsOrjson)
    set_json_dumps(lambda v: orjson.dumps(v, default=_json_default).decode(), conn)
    conn.execute(SESSION_SETTINGS)
    conn.commit()


class _Pool(ConnectionPool):
    """A pool that does not hand out connections whose server went away.

    An idle connection has nothing to read unless its backend ended: a terminated backend
    (pg_terminate_backend, a restart, a failover) leaves an error message and EOF on the
    socket. Such a connection is probed, then closed and given back (the pool opens another)
    instead of failing the caller's statement: a `creep server` answered 503 once per dead
    pooled connection. The readiness poll costs no round trip on the hot path. (psycopg_pool's
    own `check` callback would probe every checkout, and backs off a second or more after
    each dead one.)"""

    def getconn(self, timeout: float | None = None) -> psycopg.Connection[Any]:
        for _ in range((self.max_size or 1) + 1):
            conn = super().getconn(timeout)
            readable, _, _ = select.select([conn.fileno()], [], [], 0)
            if not readable:
                return conn
            try:  # something to read: most likely the end, but probe rather than guess
                ConnectionPool.check_connection(conn)
            except psycopg.Error:
                conn.close()
                self.putconn(conn)  # closed: discarded, and replaced in the background
                continue
            return conn
        return super().getconn(timeout)


def _json_default(value: Any) -> Any:
    from decimal import Decimal

    if isinstance(value, Decimal):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


_STATUS = {s.value: s for s in TaskStatus}
_STATUS_AT = _IDX["status"]


def _row_to_task(row: Sequence[Any]) -> TaskOrder:
    v = list(row)
    v[_STATUS_AT] = _STATUS[v[_STATUS_AT]]  # a dict lookup: TaskStatus(...) costs 1.5 us
    return TaskOrder(*v)


_Claimed = tuple[int, datetime, ClaimedTask]  # sort keys (-priority, created_at), the task


#: A claim's row (plain or leased): the fields a worker needs, then the whole task as one
#: JSON array (text), decoded only when a handler reads ctx.task. Parsing ~45 typed columns per claimed
#: task cost the claiming thread ~8.5 us each; these few and one string cost ~2.8. Numerics
#: travel as text (exact), timestamps as ISO 8601 in the session's time zone (UTC).
_COMPACT = ("task_id", "task_type", "attempt", "max_attempts", "priority", "created_at",
            "deadline_at")
_NUMERIC_COLUMNS = frozenset({"max_total_cost", "business_value_hint"})
_TIMESTAMP_COLUMNS = ("created_at", "queued_at", "started_at", "finished_at", "updated_at",
                      "run_after", "claim_expires_at", "deleted_at")
_CLAIM_JSON = "json_build_array({})::text".format(", ".join(
    f"t.{c}::text" if c in _NUMERIC_COLUMNS else f"t.{c}" for c in TASK_COLUMNS))
_CLAIM_RETURNING = f"{', '.join('t.' + c for c in _COMPACT)}, t.tenant_id, {_CLAIM_JSON} AS doc"
_CLAIM_COMPACT = f"{', '.join(_COMPACT)}, doc"
_TIMESTAMP_AT = tuple(_IDX[c] for c in _TIMESTAMP_COLUMNS)
_NUMERIC_AT = tuple(_IDX[c] for c in sorted(_NUMERIC_COLUMNS))
_from_iso = datetime.fromisoformat


def _json_order(row: Sequence[Any]) -> TaskOrder:
    """The TaskOrder of a plain claim's row (its JSON array of every task column)."""
    v = orjson.loads(row[-1])
    for i in _TIMESTAMP_AT:
        if v[i] is not None:
            v[i] = _from_iso(v[i])
    for i in _NUMERIC_AT:
        if v[i] is not None:
            v[i] = Decimal(v[i])
    v[_STATUS_AT] = _STATUS[v[_STATUS_AT]]
    return TaskOrder(*v)


def _claimed_plain(rows: list[Any], token: str, leased: bool = False) -> list[_Claimed]:
    lazy = ClaimedTask.lazy
    return [(-prio, created, lazy(r, _json_order, token, deadline, task_id, task_type, attempt,
                                  max_attempts, leased))
            for r in rows
            for task_id, task_type, attempt, max_attempts, prio, created, deadline, _ in (r,)]


@dataclass(slots=True)
class _Apply:
    task_id: str
    claim_token: str
    resolution: Resolution
    result_json: str | None
    error: str | None


class PostgresStore(
    PostgresSchedulesMixin, PostgresAssets, PostgresApiMixin, PostgresArtifactsMixin,
    AssetPagesMixin, PostgresMetricsMixin,
):  # schedules, assets, API tables, artifacts, REST pages: see the mixins
    dialect = "postgres"

    @property
    def bulk_writers(self) -> int:
        """Chunks of one bulk submission written at once (bulk_submit.py), each on its own
        connection: the server works on two of them in two processes."""
        return min(2, self.pool.max_size)

    def __init__(self, url: str) -> None:
        self.url = url
        parts = urlsplit(url.replace("postgresql+psycopg:", "postgresql:", 1))
        query = dict(parse_qsl(parts.query))
        try:
            pool_min = int(query.pop("pool_min", "1"))
            pool_max = int(query.pop("pool_max", "10"))
        except ValueError:
            raise ValidationError.single("database_url", "pool_min/pool_max must be integers") from None
        if not 0 <= pool_min <= pool_max or pool_max < 1:
            raise ValidationError.single("database_url", "need 0 <= pool_min <= pool_max, pool_max >= 1")
        query.setdefault("connect_timeout", "10")
        # A peer that vanished without closing (a partition, a failed-over host) is found in
        # about half a minute instead of the kernel's two hours (idle keepalive) or fifteen
        # minutes (unacknowledged data), so a worker's store call fails and is retried, and a
        # stopping process is not held by it. The URL may set other values.
        for key, value in _TCP_DEFAULTS.items():
            query.setdefault(key, value)
        # quote, not urlencode's default quote_plus: libpq reads '+' as a plus sign, so a
        # space (options=-c a=1 -c b=2) must stay %20.
        self.conninfo = urlunsplit(parts._replace(query=urlencode(query, quote_via=quote)))
        self._listeners: list[Callable[[str, str], None]] = []
        self._lane_pool: ThreadPoolExecutor | None = None
        self._lane_claimed = [0] * LANES  # what each lane claimed last time
        self._lanes_lock = threading.Lock()
        self._lanes_closed = False
        _wait_for_server(self.conninfo, url)
        try:
            self.pool = _Pool(
                self.conninfo, min_size=pool_min, max_size=pool_max, open=True,
                configure=_configure, name="creep",
            )
            self.pool.wait(timeout=15)
        except Exception as exc:  # any connect failure: one clear error
            raise StorageError(f"cannot connect to PostgreSQL at {_redact(url)}: {exc}") from exc

    def close(self) -> None:
        with self._lanes_lock:
            self._lanes_closed = True
            lanes, self._lane_pool = self._lane_pool, None
        if lanes is not None:
            lanes.shutdown(wait=True)
        self.pool.close()

    @contextmanager
    def _tx(
        self, within: psycopg.Connection[Any] | None = None
    ) -> Iterator[psycopg.Connection[Any]]:
        if within is not None:  # the caller's open transaction (a schedule firing) owns it
            yield within
            return
        try:
            with self.pool.connection() as conn, conn.transaction():
                yield conn
                pending_writes.flush(self, conn)  # e.g. the API's audit row, same transaction
        except pg_errors.CheckViolation as exc:
            if "illegal task transition" in str(exc):
                raise IllegalTransition("task", "?", "?") from exc
            raise StorageError(str(exc)) from exc
        except psycopg.Error as exc:
            raise _storage_error(exc) from exc

    # -- schema --------------------------------------------------------------------------------

    def migrate(self, target: int | None = None) -> list[int]:
        # A migration that locks tables busy workers use can meet one of them in a lock
        # cycle (a claim reads task_queue, then locks tasks; a completion updates tasks, then
        # its trigger task_queue): PostgreSQL then aborts one side. Everything here runs in
        # one transaction, so a migration that lost is tried again whole; so is one whose
        # connection was reset (a failover, pg_terminate_backend): a process opening the
        # database on start would otherwise exit for it.
        attempt = 1
        while True:
            try:
                return self._migrate(target)
            except StorageError as exc:
                lost = isinstance(exc.__cause__, pg_errors.DeadlockDetected
                                  | pg_errors.LockNotAvailable | psycopg.OperationalError)
                if not lost or attempt == _MIGRATION_ATTEMPTS:
                    raise
            time.sleep(0.2 * attempt)
            attempt += 1

    def _migrate(self, target: int | None) -> list[int]:
        applied: list[int] = []
        with self._tx() as conn:
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations (version integer PRIMARY KEY, "
                "name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
            )
            done = {r[0] for r in conn.execute("SELECT version FROM schema_migrations")}
            migrations = load_migrations("postgres")
            check_known_schema(done, migrations, target)
            for m in migrations:
                if m.version in done or (target is not None and m.version > target):
                    continue
                try:
                    conn.execute(m.sql.encode())
                except psycopg.Error as exc:  # the transaction rolls back, the earlier ones too
                    raise migration_failed(m, exc, done) from exc
                conn.execute(
                    "INSERT INTO schema_migrations (version, name) VALUES (%s, %s)",
                    (m.version, m.name),
                )
                applied.append(m.version)
        return applied

    def schema_version(self) -> int:
        with self._tx() as conn:
            exists = conn.execute("SELECT to_regclass('schema_migrations')").fetchone()
            if exists is None or exists[0] is None:
                return 0
            row = conn.execute("SELECT max(version) FROM schema_migrations").fetchone()
        return int(row[0] or 0) if row else 0

    # -- creating tasks ------------------------------------------------------------------------

    def task_create_many(
        self, specs: Sequence[TaskSpec], now: datetime, *,
        within: psycopg.Connection[Any] | None = None,  # join an open transaction (schedules)
    ) -> list[TaskOrder]:
        if not specs:
            return []
        if (
            len(specs) == 1 and within is None and not specs[0].depends_on
            and not specs[0].given_id  # checked in a transaction (_REUSED_IDS)
            and not pending_writes.waiting()
        ):  # one app.submit: the common case that waits on round trips, not on the server
            one = self._create_one(specs[0], now)
            if one is not None:
                return [one]
        by_id = {s.task_id: s for s in specs}
        if len(by_id) != len(specs):
            raise ValidationError.single("task_id", "task ids in one submission must be unique")
        attempt = 1
        while True:
            try:
                return self._create_many(specs, now, within)
            except StorageError as exc:
                # Two submissions of the same keys in different orders wait on each other's
                # uncommitted keys, and PostgreSQL aborts one (a deadlock); or a key was
                # taken by another submission between this one's insert and its replay
                # lookup. Tried again (whole: nothing of it was kept), the unique constraint
                # decides: the other's rows are committed and replay. Not inside a caller's
                # transaction, which the abort has ended.
                if within is not None or attempt == _CREATE_ATTEMPTS or not _lost_race(exc):
                    raise
            attempt += 1

    def _create_many(
        self, specs: Sequence[TaskSpec], now: datetime,
        within: psycopg.Connection[Any] | None,
    ) -> list[TaskOrder]:
        from creep.domain.dag import topological_order

        copy = len(specs) >= COPY_MIN_TASKS and all(map(is_plain, specs))
        if within is None and not copy and not any(s.depends_on for s in specs):
            # e.g. the API's group commits: new tasks and their audit rows
            created = self._create_pipelined(specs, now)
            if created is not None:
                return created
        with pending_writes.kept_on_error(), self._tx(within) as conn:
            # (Orders depending on others of this submission that are replays: see there.)
            submitted = specs
            rebound, specs = bind_replayed_dependencies(
                specs, self._replay_lookup(conn, specs, set()))
            by_id = {s.task_id: s for s in specs}
            outside = sorted({d for s in specs for d in s.depends_on if d not in by_id})
            found: dict[str, tuple[str, str]] = {}
            if outside:
                # Locks the dependencies, so their status cannot change under this decision.
                # A deleted one (in the recycle bin) is unknown to new dependants; a delete
                # that commits first is seen here (the UPDATE reads the row it waited for).
                for task_id, status, tenant in conn.execute(
                    "UPDATE tasks SET has_dependants = true WHERE task_id = ANY(%s::uuid[]) "
                    "AND deleted_at IS NULL RETURNING task_id, status, tenant_id",
                    (outside,),
                ):
                    found[task_id] = (status, tenant)
            try:
                dep_status: dict[str, str] = check_dependencies(specs, found, submitted)
            except ValidationError:
                aside = None if rebound is not None else set_replays_aside(
                    specs, self._replay_lookup(conn, specs, set()))
                if aside is None:
                    raise
                rebound, specs = aside, aside.fresh
                if not specs:  # every order is a resend
                    return rebound.resolve({})
                by_id = {s.task_id: s for s in specs}
                dep_status = check_dependencies(specs, found, submitted)
            order = (
                topological_order({s.task_id: s.depends_on for s in specs})
                if any(s.depends_on for s in specs) else list(by_id)
            )
            tasks: dict[str, TaskOrder] = {}
            status = dict(dep_status)
            for task_id in order:
                spec = by_id[task_id]
                task = new_task(spec, initial_status(spec, status, now), now, status)
                status[task_id] = task.status
                tasks[task_id] = task
            has_dependants = {d for s in specs for d in s.depends_on}
            inserted = (
                self._copy_plain(conn, specs, tasks, now)
                if copy or all(map(is_plain, specs)) else None
            )
            notified = inserted is None  # _insert's statement notifies the workers itself
            if inserted is None:
                # The API's audit rows of new tasks go in the insert itself, as on the
                # pipelined path (a replayed key inserts neither its task nor its row).
                audits = pending_writes.take_created_audits() if within is None else []
                inserted = self._insert(conn, specs, tasks, has_dependants, now, audits)
            self._refuse_reused(conn, specs, inserted)
            missing = [s for s in specs if s.task_id not in inserted]
            if missing and any(d in by_id and d not in inserted
                               for s in specs for d in s.depends_on):
                # A dependency of this call lost its key to another submission after it was
                # looked up: its dependants were built on a task never written. Tried again
                # whole, they depend on the task that took the key, from its status.
                raise StorageError(_IDEMPOTENCY_RACE)
            if missing:
                # Idempotency keys that exist already: replay or conflict, decided by the
                # unique constraint (the insert above skipped exactly these rows).
                plan = plan_replays(specs, self._replay_lookup(conn, missing, inserted))
                fresh_ids = {s.task_id for s in plan.fresh}
                if not fresh_ids <= inserted:
                    # A spec lost its key to a concurrent insert of another spec: retry whole.
                    raise StorageError(_IDEMPOTENCY_RACE)
                if inserted - fresh_ids:
                    raise StorageError("inconsistent idempotency plan")
                out = plan.resolve({tid: tasks[tid] for tid in inserted})
            else:
                out = [tasks[s.task_id] for s in specs]
            # The creation events were written by the insert statement itself.
            created = [tasks[t] for t in inserted]
            deps = [(t.task_id, d) for t in created for d in t.depends_on]
            if deps:
                conn.execute(
                    "INSERT INTO task_dependencies (task_id, depends_on_id) "
                    "SELECT * FROM unnest(%b::uuid[], %b::uuid[])",
                    ([a for a, _ in deps], [b for _, b in deps]),
                )
            if not notified and any(t.status is TaskStatus.QUEUED for t in created):
                conn.execute("SELECT pg_notify('creep_tasks', '')")
            if rebound is not None:
                out = rebound.resolve({s.task_id: t for s, t in zip(specs, out, strict=True)})
        if any(t.status is TaskStatus.QUEUED for t in created):
            self._wake("creep_tasks", "")
        return out

    @staticmethod
    def _refuse_reused(
        conn: psycopg.Connection[Any], specs: Sequence[TaskSpec], inserted: set[str]
    ) -> None:
        """Refuses (ConflictError, the transaction rolls back) a caller-chosen id of a task
        retention deleted, among the tasks this transaction `inserted`. Ids the server drew
        are never read."""
        given = [t for t in given_task_ids(specs) if t in inserted]
        if given:
            refuse_reused_task_ids([str(r[0]) for r in conn.execute(
                _REUSED_IDS, (given,)).fetchall()])

    @staticmethod
    def _replay_lookup(
        conn: psycopg.Connection[Any], specs: Sequence[TaskSpec], inserted: set[str]
    ) -> Callable[[TaskSpec], tuple[TaskOrder, str] | None]:
        """The existing task (and its request hash) with an order's idempotency key, read
        for all of `specs` at once, on the first call; an order whose own row was `inserted`
        has none."""
        rows: dict[tuple[str, str, str], Any] = {}
        read = False

        def lookup(spec: TaskSpec) -> tuple[TaskOrder, str] | None:
            nonlocal read
            if not read:
                read = True
                rows.update(
                    ((r[_IDX["tenant_id"]], r[_IDX["env"]], r[_IDX["idempotency_key"]]), r)
                    for r in conn.execute(
                        f"SELECT {TASK_SELECT}, request_hash FROM tasks t JOIN unnest("
                        "%s::text[], %s::text[], %s::text[]) k(tn, ev, ik) "
                        "ON t.tenant_id = k.tn AND t.env = k.ev AND t.idempotency_key = k.ik",
                        ([s.tenant_id for s in specs], [s.env for s in specs],
                         [s.idempotency_key for s in specs]),
                    )
                )
            row = rows.get((spec.tenant_id, spec.env, spec.idempotency_key))
            if row is None or spec.task_id in inserted:
                return None
            return _row_to_task(row[:-1]), row[-1]

        return lookup

    def _copy_plain(
        self, conn: psycopg.Connection[Any], specs: Sequence[TaskSpec],
        tasks: dict[str, TaskOrder], now: datetime,
    ) -> set[str] | None:
        """COPY plain new tasks (is_plain) and their creation events: the server's cheapest
        way in, several times faster than INSERT ... SELECT FROM unnest(...); in the binary
        format (pg_copy.py), without text to parse, and streamed in blocks. COPY has no ON
        CONFLICT: an idempotency key that exists already fails it, the savepoint undoes it,
        and None sends the caller to _insert, which replays or refuses per key."""
        task_data, event_data = copy_blocks(specs, tasks, now)
        try:
            with conn.transaction(), conn.cursor() as cur:
                with cur.copy(_COPY_TASKS) as copy:
                    for block in task_data:
                        copy.write(block)
                with cur.copy(_COPY_EVENTS) as copy:
                    for block in event_data:
                        copy.write(block)
        except pg_errors.UniqueViolation:
            return None
        return set(tasks)

    def _insert(
        self, conn: psycopg.Connection[Any], specs: Sequence[TaskSpec],
        tasks: dict[str, TaskOrder], has_dependants: set[str], now: datetime,
        audits: Sequence[AuditRow] = (),
    ) -> set[str]:
        rows = conn.execute(*_insert_statement(specs, tasks, has_dependants, now, audits))
        return {r[0] for r in rows.fetchall()}

    @contextmanager
    def _statement_tx(self) -> Iterator[psycopg.Connection[Any]]:
        """A pooled connection for a transaction sent as BEGIN and COMMIT statements, so that
        they travel in a pipeline with the work (psycopg's own transaction blocks each wait
        for a reply; autocommit is client side only). Rolled back if it is left open: a
        failure before COMMIT keeps nothing."""
        with self.pool.connection() as conn:
            conn.autocommit = True
            try:
                yield conn
            finally:
                if conn.info.transaction_status != TransactionStatus.IDLE:
                    conn.execute("ROLLBACK")
                conn.autocommit = False

    def _create_pipelined(self, specs: Sequence[TaskSpec], now: datetime) -> list[TaskOrder] | None:
        """New tasks without dependencies in two round trips instead of five: BEGIN, their
        insert and the writes that ride along (the API's audit rows) are sent together, as
        task_claim does (BEGIN and COMMIT as statements, autocommit being client side only),
        then COMMIT. Each round trip made the writer wait for the server, then for the GIL.
        When an idempotency key exists already (or is twice in `specs`) the transaction is
        rolled back and None sends the caller to the general path, which replays or refuses
        per key (in the pipeline a failed statement would be costlier to recover from)."""
        tasks = {s.task_id: new_task(s, initial_status(s, {}, now), now) for s in specs}
        riding = pending_writes.queued()
        try:
            # The API's audit rows go in the insert statement itself (restored with the rest,
            # whatever fails from here on).
            query, params = _insert_statement(
                specs, tasks, set(), now, pending_writes.take_created_audits())
            given = given_task_ids(specs)
            with self._statement_tx() as conn:
                with conn.pipeline():
                    conn.execute("BEGIN")
                    cur = conn.execute(query, params)
                    # After the insert, in its transaction (see _REUSED_IDS).
                    reused = conn.execute(_REUSED_IDS, (given,)) if given else None
                    pending_writes.flush(self, conn)
                if len(cur.fetchall()) < len(specs):  # _statement_tx rolls it back
                    pending_writes.restore(riding)  # the general path writes them
                    return None
                if reused is not None:  # all were inserted: each given id is new here
                    refuse_reused_task_ids([str(r[0]) for r in reused.fetchall()])
                conn.execute("COMMIT")
        except psycopg.Error as exc:
            pending_writes.restore(riding)
            raise _storage_error(exc) from exc
        except BaseException:
            pending_writes.restore(riding)
            raise
        if any(t.status is TaskStatus.QUEUED for t in tasks.values()):
            self._wake("creep_tasks", "")
        return [tasks[s.task_id] for s in specs]

    def _create_one(self, spec: TaskSpec, now: datetime) -> TaskOrder | None:
        """A single new task without dependencies in one round trip instead of three: its
        insert is one statement (the row, its creation events, the workers' NOTIFY), run in
        autocommit, so it is its own transaction (atomic and durable: synchronous_commit
        applies as to any COMMIT). None when its idempotency key exists already (nothing was
        written): the caller then takes the general path, which replays or refuses."""
        task = new_task(spec, initial_status(spec, {}, now), now)
        query, params = _insert_statement([spec], {spec.task_id: task}, set(), now)
        try:
            with self.pool.connection() as conn:
                conn.autocommit = True  # client side only: psycopg just sends no BEGIN
                try:
                    inserted = conn.execute(query, params).fetchall()
                finally:
                    conn.autocommit = False
        except psycopg.Error as exc:
            raise _storage_error(exc) from exc
        if not inserted:
            return None
        if task.status is TaskStatus.QUEUED:
            self._wake("creep_tasks", "")
        return task


    # -- reading tasks -------------------------------------------------------------------------

    def task_get(self, task_id: str, tenant_id: str | None = None) -> TaskOrder:
        if not is_uuid(task_id):
            raise NotFound("task", task_id)
        with self._tx() as conn:
            return self._get(conn, task_id, tenant_id, lock=False)

    def task_get_many(
        self, task_ids: Sequence[str], tenant_id: str | None = None
    ) -> dict[str, TaskOrder]:
        ids = [t for t in task_ids if is_uuid(t)]
        if not ids:
            return {}
        with self._tx() as conn:
            rows = conn.execute(
                f"SELECT {TASK_SELECT} FROM tasks WHERE task_id = ANY(%s::uuid[])", (ids,)
            ).fetchall()
        tasks = (_row_to_task(row) for row in rows)
        return {t.task_id: t for t in tasks if tenant_id is None or t.tenant_id == tenant_id}

    def _get(
        self, conn: psycopg.Connection[Any], task_id: str, tenant_id: str | None, *, lock: bool
    ) -> TaskOrder:
        row = conn.execute(
            f"SELECT {TASK_SELECT} FROM tasks WHERE task_id = %s"
            + (" FOR UPDATE" if lock else ""),
            (task_id,),
        ).fetchone()
        if row is None or (tenant_id is not None and row[_IDX["tenant_id"]] != tenant_id):
            raise NotFound("task", task_id)
        return _row_to_task(row)

    def task_list(
        self, flt: TaskFilter, *, after: str | None = None, limit: int = 100
    ) -> list[TaskOrder]:
        where = ["deleted_at IS NOT NULL" if flt.deleted else "deleted_at IS NULL"]
        params: list[Any] = []
        for column in (
            "tenant_id", "status", "task_type", "task_category", "batch_id", "project_id", "env"
        ):
            value = getattr(flt, column)
            if value is not None:
                where.append(f"{column} = %s")
                params.append(value)
        if flt.status in _ACTIVE_STATUSES:
            # tasks has no status index (its updates stay HOT, migration 0010): an active
            # status is found through task_queue instead of walking the tenant's history.
            where.append("task_id IN (SELECT task_id FROM task_queue WHERE status = %s)")
            params.append(flt.status)
        if flt.tag is not None:
            where.append("tags ? %s")
            params.append(flt.tag)
        if flt.created_from is not None:
            where.append("created_at >= %s")
            params.append(flt.created_from)
        if flt.created_to is not None:
            where.append("created_at < %s")
            params.append(flt.created_to)
        if after:
            created, last_id = sortable_cursor(after, micros=False)
            where.append("(created_at, task_id) < (%s, %s::uuid)")
            params.extend([created, last_id])
        params.append(limit)
        with self._tx() as conn:
            rows = conn.execute(
                f"SELECT {TASK_SELECT} FROM tasks WHERE {' AND '.join(where)} "
                "ORDER BY created_at DESC, task_id DESC LIMIT %s",
                params,
            ).fetchall()
        return [_row_to_task(r) for r in rows]

    @staticmethod
    def list_cursor(task: TaskOrder) -> str:
        return f"{task.created_at.isoformat()}/{task.task_id}"

    # -- the queue -----------------------------------------------------------------------------

    def task_claim(
        self, worker_id: str, task_types: Sequence[str], limit: int, now: datetime,
        claim_ttl: float, claim_token: str | None = None,
    ) -> list[ClaimedTask]:
        if limit <= 0 or not task_types:
            return []
        # Pipelined: BEGIN goes out with the hinted step's first read, its planner reset and
        # COMMIT with the claim. Two round trips, not six: an idle worker woken by one submit
        # starts the task that much sooner. BEGIN and COMMIT are sent as statements (autocommit
        # is client side only): psycopg's own transaction blocks each wait for a reply. The
        # rows are returned only once the pipeline's end has confirmed the COMMIT.
        try:
            with self._statement_tx() as conn, conn.pipeline():
                conn.execute("BEGIN")
                if not pending_writes.waiting():
                    conn.execute(_CLAIM_COMMIT)
                claimed, _ = self._claim_rows(
                    conn, worker_id, task_types, limit, now, claim_ttl,
                    finish=lambda: _commit_pipelined(self, conn), token=claim_token,
                )
        except psycopg.Error as exc:
            raise StorageError(str(exc)) from exc
        return claimed

    def _claim_rows(
        self, conn: psycopg.Connection[Any], worker_id: str, task_types: Sequence[str],
        limit: int, now: datetime, claim_ttl: float, tenant_id: str | None = None,
        finish: Callable[[], None] | None = None, lane: int | None = None,
        token: str | None = None,
    ) -> tuple[list[ClaimedTask], str]:
        """The claim inside a transaction: the claimed tasks, in claim order (highest
        priority first, then oldest), and their claim token (a new one unless `token` is
        given: an HTTP worker's claim_id). `finish`
        (in pipeline mode: queue the COMMIT) runs after the claim is sent, before its rows
        are read, so that it travels in the same round trip. With `lane`, the claim prefers
        that claim lane's assets, and the token names the lane (claim_lanes.py)."""
        if token is None:
            token = str(uuid.uuid4()) if lane is None else lane_token(lane)
        # The claim's planner settings (no sequential or bitmap scans, no JIT), set once for
        # the whole claim: they are what the hinted step's own index_plans would set (and then
        # reset, only for the claim to set them again), plus JIT off, which no OLTP statement
        # repays. In task_claim's pipeline this travels with BEGIN and the hinted read.
        conn.execute(_CLAIM_PLANNER)
        # Tasks with resource_hints first: leased and claimed together, or left QUEUED.
        hinted = self._claim_hinted_rows(
            conn, worker_id, token, task_types, limit, now, claim_ttl, tenant_id, lane
        )
        if len(hinted) >= limit:
            if finish is not None:
                finish()
            return [c for _, _, c in _claimed_plain(hinted, token, leased=True)], token
        # Inside task_claim's pipeline already (a nested pipeline would sync on entry).
        # The order comes from task_queue (migration 0010); the lock is taken on the tasks row,
        # as every other writer does first, and `t.status = 'QUEUED'` is re-checked on its
        # latest version when a concurrent claim or cancel committed in between, as is
        # `t.run_after` (a retry that committed meanwhile has a backoff to wait out).
        with nullcontext() if conn.pgconn.pipeline_status else conn.pipeline():
            cur = conn.execute(
                f"""WITH picked AS (
                    SELECT t.ctid FROM task_queue q JOIN tasks t ON t.task_id = q.task_id
                    WHERE q.status = 'QUEUED' AND q.has_hints = false AND q.run_after <= %(now)s
                      AND q.task_type = ANY(%(types)s::text[])
                      AND (%(tenant)s::text IS NULL OR q.tenant_id = %(tenant)s::text)
                      AND t.status = 'QUEUED' AND t.run_after <= %(now)s
                    ORDER BY q.priority DESC, q.created_at LIMIT %(n)s
                    FOR UPDATE OF t SKIP LOCKED
                ), claimed AS (
                    UPDATE tasks t SET status = 'RUNNING', attempt = t.attempt + 1,
                        started_at = %(now)s, updated_at = %(now)s, claimed_by = %(w)s,
                        claim_token = %(tok)s, claim_expires_at = %(exp)s,
                        deadline_at = %(now)s + t.timeout_ms * interval '1 millisecond',
                        task_version = t.task_version + 1, cancel_requested = false,
                        progress_message = NULL
                    WHERE t.ctid = ANY(ARRAY(SELECT ctid FROM picked))
                    RETURNING {_CLAIM_RETURNING}
                ), started AS (
                    INSERT INTO task_events ({_EVENT_COLUMNS})
                    SELECT task_id, tenant_id, 'started', 'QUEUED', 'RUNNING', attempt,
                        %(started)s::jsonb, %(now)s FROM claimed
                )
                SELECT {_CLAIM_COMPACT} FROM claimed ORDER BY priority DESC, created_at""",
                {"now": now, "types": list(task_types), "n": limit - len(hinted), "w": worker_id,
                 "tok": token, "exp": now + timedelta(seconds=claim_ttl), "tenant": tenant_id,
                 "started": Jsonb({"worker_id": worker_id})},
            )
            if finish is not None:
                finish()
        plain = _claimed_plain(cur.fetchall(), token)
        if not hinted:
            return [c for _, _, c in plain], token
        merged = [*_claimed_plain(hinted, token, leased=True), *plain]
        merged.sort(key=itemgetter(0, 1))
        return [c for _, _, c in merged], token

    def task_heartbeat(
        self, worker_id: str, claims: Sequence[tuple[str, str]], now: datetime, claim_ttl: float
    ) -> HeartbeatResult:
        result = HeartbeatResult()
        if not claims:
            return result
        with self._tx() as conn:
            # A primary-key probe per claim, as in _apply (the status test is a join condition).
            rows = _probe(
                conn,
                """UPDATE tasks t SET claim_expires_at = %s
                FROM unnest(%b::uuid[], %b::uuid[]) c(id, tok)
                WHERE t.task_id = c.id AND t.claim_token = c.tok
                  AND t.status = CASE WHEN c.tok IS NOT NULL THEN 'RUNNING' END
                RETURNING t.task_id, t.cancel_requested, t.has_hints""",
                (now + timedelta(seconds=claim_ttl), [c[0] for c in claims],
                 [c[1] for c in claims]),
            )
            # Only tasks with resource hints hold leases (the claim takes them): a worker
            # running plain tasks renews none and looks for no revoked one.
            hinted = [r[0] for r in rows if r[2]]
            if hinted:
                # Their leases are probed by claim, as the tasks are (on a leases table not
                # analyzed yet, the planner read every lease ever taken for a heartbeat).
                tokens = dict(claims)
                with conn.pipeline():
                    conn.execute(_PROBE_PLANNER)
                    self._leases_renew(conn, hinted, now + timedelta(seconds=claim_ttl))
                    result.revoked = self._leases_revoked(
                        conn, [(t, tokens[t]) for t in hinted])
                    for name in _PROBE_SETTINGS:
                        conn.execute(f"RESET {name}")
        held = {r[0] for r in rows}
        result.cancel_requested = [r[0] for r in rows if r[1]]
        result.lost = [task_id for task_id, _ in claims if task_id not in held]
        return result

    def task_complete_many(self, completions: Sequence[Completion], now: datetime) -> list[str]:
        if not completions:
            return []
        items = _apply_items(completions)
        with self._tx() as conn:
            applied = self._apply(conn, items, now)
            if any(i.resolution.status is TaskStatus.QUEUED for i in items):
                conn.execute("SELECT pg_notify('creep_tasks', '')")
        if any(i.resolution.status is TaskStatus.QUEUED for i in items):
            self._wake("creep_tasks", "")
        return applied

    def _apply(self, conn: psycopg.Connection[Any], items: list[_Apply], now: datetime) -> list[str]:
        for status in {item.resolution.status for item in items}:
            check_transition(TaskStatus.RUNNING, status)
        # The usual completion, a plain success, binds three arrays (id, token, result) to a
        # statement with the rest as constants; eleven per-row arrays cost psycopg ~2 us of
        # Python per task to build and the server a jsonb parse per event payload.
        plain = [i for i in items if _is_plain_success(i)]
        rows = _probe(conn, _SUCCESS_APPLY_SQL, _success_params(plain, now)) if plain else []
        if len(plain) < len(items):
            rows += self._apply_general(
                conn, [i for i in items if not _is_plain_success(i)], now)
        return self._applied(conn, items, rows, now)

    def _apply_general(
        self, conn: psycopg.Connection[Any], items: list[_Apply], now: datetime
    ) -> list[Any]:
        # One primary-key probe per completion, whatever the statistics say: a nested loop
        # from the batch into tasks_pkey is the only plan left (see _PROBE_PLANNER). The status
        # test names o, so it is a join condition: a plain `t.status = 'RUNNING'` let the
        # planner read tasks_running instead, and once the statement was prepared (generic
        # plan, the unnest guessed at 10 rows) it nested-looped every RUNNING task against the
        # whole batch: 250k comparisons per 500 completions, 4x slower than the claim.
        rows = _probe(
            conn,
            f"""WITH o AS (
                SELECT * FROM unnest(%b::uuid[], %b::uuid[], %b::text[], %b::text[], %b::text[],
                    %b::jsonb[], %b::text[], %b::timestamptz[], %b::boolean[], %b::text[],
                    %b::jsonb[])
                AS o(id, tok, status, code, message, result, error, run_after, charge, event,
                     payload)
            ), done AS (
                UPDATE tasks t SET status = o.status, result_code = o.code,
                    result_message = o.message,
                    result_payload = COALESCE(o.result, t.result_payload),
                    last_error = COALESCE(o.error, t.last_error),
                    finished_at = CASE WHEN o.status = 'QUEUED' THEN NULL ELSE %s END,
                    run_after = COALESCE(o.run_after, t.run_after),
                    queued_at = CASE WHEN o.status = 'QUEUED' THEN %s ELSE t.queued_at END,
                    attempt = CASE WHEN o.charge THEN t.attempt ELSE t.attempt - 1 END,
                    progress = CASE WHEN o.status = 'SUCCESS' THEN 100 ELSE t.progress END,
                    claimed_by = NULL, claim_token = NULL, claim_expires_at = NULL,
                    deadline_at = NULL,
                    cancel_requested = o.status = 'QUEUED' AND t.cancel_requested,
                    task_version = t.task_version + 1, updated_at = %s
                FROM o WHERE t.task_id = o.id AND t.claim_token = o.tok
                  AND t.status = CASE WHEN o.tok IS NOT NULL THEN 'RUNNING' END
                RETURNING t.task_id, t.tenant_id, t.status, t.has_dependants, o.event, o.payload,
                    t.attempt + CASE WHEN o.charge THEN 0 ELSE 1 END AS attempt, t.has_hints,
                    t.cancel_requested
            ), ev AS (
                INSERT INTO task_events ({_EVENT_COLUMNS})
                SELECT task_id, tenant_id, event, 'RUNNING', status, attempt, payload, %s FROM done
            )
            SELECT task_id, status, has_dependants, has_hints, cancel_requested FROM done""",
            (
                [i.task_id for i in items], [i.claim_token for i in items],
                [i.resolution.status.value for i in items],
                [i.resolution.result_code for i in items],
                [i.resolution.result_message for i in items],
                [i.result_json for i in items], [i.error for i in items],
                [i.resolution.run_after for i in items],
                [i.resolution.charge_attempt for i in items],
                [i.resolution.event_type for i in items],
                [dumps(resolution_payload(i.resolution, i.error)).decode() for i in items],
                now, now, now, now,
            ),
        )
        return rows

    def _applied(
        self, conn: psycopg.Connection[Any], items: list[_Apply], rows: list[Any], now: datetime
    ) -> list[str]:
        """What follows the applied transitions (`rows`: task_id, status, has_dependants,
        has_hints): leases settled, dependants promoted or cancelled."""
        if any(r[3] for r in rows):  # tasks that may hold leases
            by_id = {i.task_id: i for i in items}
            self._leases_settle(conn, [
                (r[0], by_id[r[0]].claim_token, r[1], by_id[r[0]].resolution.event_type,
                 by_id[r[0]].resolution.result_code)
                for r in rows if r[3]
            ], now)
        succeeded = [r[0] for r in rows if r[2] and r[1] == "SUCCESS"]
        dead = [r[0] for r in rows if r[2] and r[1] not in ("SUCCESS", "QUEUED")]
        if succeeded:
            self._promote_dependants(conn, succeeded, now)
        if dead:
            self._cancel_dependants(conn, dead, now)
        stopped = [r[0] for r in rows if r[1] == "QUEUED" and r[4]]  # (successes: 4 columns)
        if stopped:
            self._cancel_requeued(conn, stopped, now)
        return [r[0] for r in rows]

    def _cancel_requeued(
        self, conn: psycopg.Connection[Any], task_ids: list[str], now: datetime
    ) -> None:
        """Tasks whose attempt ended in a retry (or whose worker was lost) while their
        cancellation was requested: cancelled now, as a queued task is, instead of run again."""
        rows = conn.execute(
            """UPDATE tasks SET status = 'CANCELLED', result_code = 'CANCELLED',
                result_message = %(msg)s, finished_at = %(now)s, updated_at = %(now)s,
                cancel_requested = false, task_version = task_version + 1
            WHERE task_id = ANY(%(ids)s::uuid[]) AND status = 'QUEUED' AND cancel_requested
            RETURNING task_id, tenant_id, attempt""",
            {"msg": CANCELLED_WHILE_ENDING, "now": now, "ids": task_ids},
        ).fetchall()
        payload = Jsonb({"reason": CANCELLED_WHILE_ENDING})
        _insert_events(conn, [(r[0], r[1], "cancelled", "QUEUED", "CANCELLED", r[2], payload, now)
                              for r in rows])
        if rows:
            self._cancel_dependants(conn, [r[0] for r in rows], now)

    def _promote_dependants(
        self, conn: psycopg.Connection[Any], parents: list[str], now: datetime
    ) -> None:
        # Lock the candidates first; the promoting statement then runs on a fresh snapshot and
        # sees a sibling dependency that another transaction finished meanwhile. Only those
        # whose every dependency is SUCCESS or RUNNING (the only status a sibling can be
        # finishing from): one waiting on an open task cannot be promoted, and locking it
        # deadlocked with a cancellation holding that task and cascading to it.
        candidates = [
            r[0] for r in conn.execute(
                "SELECT task_id FROM tasks t WHERE status = 'PENDING' AND task_id IN ("
                "SELECT task_id FROM task_dependencies WHERE depends_on_id = ANY(%s::uuid[])) "
                "AND NOT EXISTS (SELECT 1 FROM task_dependencies d JOIN tasks p "
                "ON p.task_id = d.depends_on_id WHERE d.task_id = t.task_id "
                "AND p.status NOT IN ('SUCCESS', 'RUNNING')) "
                "ORDER BY task_id FOR UPDATE OF t",
                (parents,),
            )
        ]
        if not candidates:
            return
        conn.execute(
            f"""WITH q AS (
                UPDATE tasks SET status = 'QUEUED', queued_at = %(now)s, updated_at = %(now)s,
                    task_version = task_version + 1
                WHERE task_id = ANY(%(ids)s::uuid[]) AND status = 'PENDING'
                  AND run_after <= %(now)s
                  AND NOT EXISTS (SELECT 1 FROM task_dependencies d JOIN tasks p
                                  ON p.task_id = d.depends_on_id
                                  WHERE d.task_id = tasks.task_id AND p.status <> 'SUCCESS')
                RETURNING task_id, tenant_id, attempt
            )
            INSERT INTO task_events ({_EVENT_COLUMNS})
            SELECT task_id, tenant_id, 'queued', 'PENDING', 'QUEUED', attempt, '{{}}', %(now)s
            FROM q""",
            {"now": now, "ids": candidates},
        )
        conn.execute("SELECT pg_notify('creep_tasks', '')")

    @staticmethod
    def _lock_open_dependants(
        conn: psycopg.Connection[Any], ids: list[str], *, open_roots: bool
    ) -> None:
        """Lock, in task_id order, the open tasks a cancellation of `ids` cascades to; with
        `open_roots`, those of `ids` that are open too (only they cascade)."""
        conn.execute(_LOCK_OPEN_DEPENDANTS, {"ids": ids, "open_roots": open_roots})

    def _cancel_dependants(
        self, conn: psycopg.Connection[Any], parents: list[str], now: datetime
    ) -> None:
        # Every open task the cascade reaches is locked first, in task_id order, as a user's
        # cancel locks its task and the tasks it cascades to (task_cancel): two cascades
        # reaching the same tasks level by level locked them in different orders and
        # deadlocked. (A dependant committed meanwhile is locked by the updates below.)
        self._lock_open_dependants(conn, parents, open_roots=False)
        frontier = parents
        while frontier:
            rows = conn.execute(
                f"""WITH c AS (
                    -- Each names the dependency in `ids` that cancels it (the task that
                    -- ended, or the one cancelled before it in the cascade), and how it ended.
                    UPDATE tasks SET status = 'CANCELLED', result_code = 'DEPENDENCY_FAILED',
                        result_message = (
                            SELECT 'dependency ' || d.depends_on_id::text || ' ended '
                                || p.status::text
                            FROM task_dependencies d JOIN tasks p
                                ON p.task_id = d.depends_on_id
                            WHERE d.task_id = tasks.task_id
                              AND d.depends_on_id = ANY(%(ids)s::uuid[])
                            ORDER BY d.depends_on_id LIMIT 1),
                        finished_at = %(now)s, updated_at = %(now)s,
                        task_version = task_version + 1
                    WHERE status IN ('PENDING', 'QUEUED') AND task_id IN (
                        SELECT task_id FROM task_dependencies
                        WHERE depends_on_id = ANY(%(ids)s::uuid[]))
                    RETURNING task_id, tenant_id, attempt, has_dependants, result_message
                ), ev AS (
                    INSERT INTO task_events ({_EVENT_COLUMNS})
                    SELECT task_id, tenant_id, 'cancelled', 'PENDING', 'CANCELLED', attempt,
                        jsonb_build_object('result_code', 'DEPENDENCY_FAILED',
                                           'message', result_message), %(now)s FROM c
                )
                SELECT task_id, has_dependants FROM c""",
                {"now": now, "ids": frontier},
            ).fetchall()
            frontier = [r[0] for r in rows if r[1]]

    def task_progress(
        self, task_id: str, claim_token: str, progress: int, message: str | None, now: datetime
    ) -> bool:
        with self._tx() as conn:
            row = conn.execute(
                f"""WITH p AS (
                    UPDATE tasks SET progress = %(p)s, progress_message = %(m)s,
                        updated_at = %(now)s, task_version = task_version + 1
                    WHERE task_id = %(id)s AND claim_token = %(tok)s AND status = 'RUNNING'
                      AND NOT (progress = %(p)s AND progress_message IS NOT DISTINCT FROM %(m)s
                               AND updated_at > started_at)
                    RETURNING task_id, tenant_id, attempt
                ), ev AS (
                    INSERT INTO task_events ({_EVENT_COLUMNS})
                    SELECT task_id, tenant_id, 'progress', 'RUNNING', 'RUNNING', attempt,
                        %(payload)s, %(now)s FROM p
                )
                SELECT count(*) FROM p""",
                {"p": progress, "m": message, "now": now, "id": task_id, "tok": claim_token,
                 "payload": Jsonb({"progress": progress, "message": message})},
            ).fetchone()
            if not (row and row[0]):
                # A progress identical to the one this claim recorded last (its row was
                # updated since the claim) is a resend after a lost answer: nothing written.
                row = conn.execute(
                    "SELECT 1 FROM tasks WHERE task_id = %s AND claim_token = %s "
                    "AND status = 'RUNNING'", (task_id, claim_token),
                ).fetchone()
        return bool(row and row[0])

    def task_cancel(
        self, task_id: str, now: datetime, *, tenant_id: str | None = None,
        reason: str | None = None,
    ) -> TaskOrder:
        if not is_uuid(task_id):
            raise NotFound("task", task_id)
        payload = Jsonb({"reason": reason} if reason else {})
        running = False
        with self._tx() as conn:
            # An open task and the open tasks its cancellation cascades to, in task_id order
            # (see _cancel_dependants), before the task itself is read.
            self._lock_open_dependants(conn, [task_id], open_roots=True)
            task = self._get(conn, task_id, tenant_id, lock=True)
            if task.deleted_at is not None:
                raise TaskDeleted(task_id, "cancelled")
            if task.status is TaskStatus.RUNNING:
                if task.cancel_requested:
                    raise ConflictError(f"task {task_id}: cancellation is already requested")
                conn.execute(
                    "UPDATE tasks SET cancel_requested = true, updated_at = %s, "
                    "task_version = task_version + 1 WHERE task_id = %s",
                    (now, task_id),
                )
                _insert_events(conn, [(task_id, task.tenant_id, "cancel_requested", "RUNNING",
                                       "RUNNING", task.attempt, payload, now)])
                conn.execute("SELECT pg_notify('creep_cancel', %s)", (task_id,))
                running = True
            else:
                check_transition(task.status, TaskStatus.CANCELLED)
                conn.execute(
                    "UPDATE tasks SET status = 'CANCELLED', result_code = 'CANCELLED', "
                    "result_message = %s, finished_at = %s, updated_at = %s, "
                    "task_version = task_version + 1 WHERE task_id = %s",
                    (reason or "cancelled", now, now, task_id),
                )
                _insert_events(conn, [(task_id, task.tenant_id, "cancelled", task.status.value,
                                       "CANCELLED", task.attempt, payload, now)])
                self._cancel_dependants(conn, [task_id], now)
            updated = self._get(conn, task_id, None, lock=False)
        if running:
            self._wake("creep_cancel", task_id)
        return updated

    def task_retry(
        self, task_id: str, now: datetime, *, tenant_id: str | None = None
    ) -> TaskOrder:
        if not is_uuid(task_id):
            raise NotFound("task", task_id)
        with self._tx() as conn:
            task = self._get(conn, task_id, tenant_id, lock=True)
            if task.deleted_at is not None:
                raise TaskDeleted(task_id, "retried")
            if task.status not in RETRYABLE_FROM:
                raise IllegalTransition("task", task.status.value, TaskStatus.QUEUED.value)
            if task.batch_id is not None:
                # After a sweep that judges the batch, or before it (it waits for this).
                conn.execute(f"SELECT pg_advisory_xact_lock_shared({BATCH_PURGE_LOCK})",
                             (task.batch_id,))
                refuse_purging_batch(task_id, task.batch_id, conn.execute(
                    BATCH_PURGING.replace("?", "%s"), (task.batch_id,)).fetchone())
            if task.depends_on:
                # By the ids the task's row names: retention deletes a finished dependency
                # and its task_dependencies rows with it.
                check_retry_dependencies(task, dict(conn.execute(
                    "SELECT task_id, status FROM tasks WHERE task_id = ANY(%s::uuid[])",
                    (task.depends_on,),
                ).fetchall()))
            retries = retries_allowed(task.constraints)
            conn.execute(
                """UPDATE tasks SET status = 'QUEUED', queued_at = %(now)s, run_after = %(now)s,
                    finished_at = NULL, result_code = NULL, result_message = NULL,
                    max_attempts = attempt + %(n)s, updated_at = %(now)s,
                    task_version = task_version + 1
                WHERE task_id = %(id)s""",
                {"now": now, "n": retries + 1, "id": task_id},
            )
            _insert_events(conn, [(task_id, task.tenant_id, "queued", task.status.value,
                                   "QUEUED", task.attempt, Jsonb({"manual_retry": True}), now)])
            conn.execute("SELECT pg_notify('creep_tasks', '')")
            updated = self._get(conn, task_id, None, lock=False)
        self._wake("creep_tasks", "")
        return updated

    def task_update(
        self, task_id: str, expected_version: int, changes: dict[str, Any], now: datetime,
        *, tenant_id: str | None = None,
    ) -> TaskOrder:
        unknown = set(changes) - UPDATABLE_FIELDS
        if unknown:
            raise ValidationError(
                [(name, "cannot be changed after creation") for name in sorted(unknown)]
            )
        if not is_uuid(task_id):
            raise NotFound("task", task_id)
        with self._tx() as conn:
            task = self._get(conn, task_id, tenant_id, lock=True)
            if task.task_version != expected_version:
                raise VersionConflict("task", task_id, expected_version, task.task_version)
            if task.deleted_at is not None:
                raise TaskDeleted(task_id, "changed")
            if not changes:
                return task
            sets: list[str] = []
            params: list[Any] = []
            for name, value in changes.items():
                sets.append(f"{name} = %s")
                params.append(Jsonb(value) if name == "tags" else value)
            conn.execute(
                f"UPDATE tasks SET {', '.join(sets)}, updated_at = %s, "
                "task_version = task_version + 1 WHERE task_id = %s",
                (*params, now, task_id),
            )
            _insert_events(conn, [(task_id, task.tenant_id, "updated", task.status.value,
                                   task.status.value, task.attempt,
                                   Jsonb({"changes": changes}), now)])
            return self._get(conn, task_id, None, lock=False)

    def task_delete(
        self, task_id: str, now: datetime, *, tenant_id: str | None = None,
        expected_version: int | None = None,
    ) -> TaskOrder:
        return self._soft_delete(task_id, now, tenant_id, expected_version, delete=True)

    def task_restore(
        self, task_id: str, now: datetime, *, tenant_id: str | None = None,
        expected_version: int | None = None,
    ) -> TaskOrder:
        return self._soft_delete(task_id, now, tenant_id, expected_version, delete=False)

    def _soft_delete(
        self, task_id: str, now: datetime, tenant_id: str | None,
        expected_version: int | None, *, delete: bool,
    ) -> TaskOrder:
        if not is_uuid(task_id):
            raise NotFound("task", task_id)
        try:
            with self._tx() as conn:
                # The row lock orders it with a retry or cancel of the task: a retry that
                # came first left it QUEUED (refused here), one that comes after finds it
                # deleted (refused there).
                task = self._get(conn, task_id, tenant_id, lock=True)
                check_soft_delete(task, delete, expected_version)
                conn.execute(
                    "UPDATE tasks SET deleted_at = %s, updated_at = %s, "
                    "task_version = task_version + 1 WHERE task_id = %s",
                    (now if delete else None, now, task_id),
                )
                _insert_events(conn, [(task_id, task.tenant_id,
                                       "deleted" if delete else "restored", task.status.value,
                                       task.status.value, task.attempt, Jsonb({}), now)])
                return self._get(conn, task_id, None, lock=False)
        except Unchanged as same:  # rolled back: nothing written
            return same.task

    # -- events --------------------------------------------------------------------------------

    def task_events(self, task_id: str, tenant_id: str | None = None) -> list[TaskEvent]:
        """Every committed event of the task, in the order they committed: event_id order.
        Every transaction that writes an event of a task holds the task's row lock from before
        it draws the event's id (nextval) until it commits (the row is updated or locked
        first; a new task's events commit with the task, before anyone can see it), so a
        task's event ids are drawn and committed one transaction after another. One task's
        events need no horizon; across tasks there is no such order, hence the horizon of
        the all-tasks stream (task_events_after without task_id)."""
        self.task_get(task_id, tenant_id)
        with self._tx() as conn:
            rows = conn.execute(
                f"SELECT event_id, txid::text, {_EVENT_COLUMNS} FROM task_events "
                "WHERE task_id = %s ORDER BY event_id",
                (task_id,),
            ).fetchall()
        return [_row_to_event(r) for r in rows]

    def task_events_after(
        self, cursor: str | None, *, limit: int = 500, task_id: str | None = None,
        tenant_id: str | None = None,
    ) -> list[TaskEvent]:
        txid, event_id = _parse_cursor(cursor)
        params: list[Any]
        if task_id is not None:
            # One task's events: in event_id order, the order they committed (see
            # task_events), so everything committed is final and nothing waits for a horizon.
            if not is_uuid(task_id):
                return []
            where = ["task_id = %s", "event_id > %s"]
            params = [task_id, event_id]
            order = "event_id"
        else:
            # Only transactions older than every open one are final: reading no further
            # means a late-committing transaction can never land behind the cursor.
            where = [
                "(txid, event_id) > (%s::text::xid8, %s)",
                "txid < pg_snapshot_xmin(pg_current_snapshot())",
            ]
            params = [txid, event_id]
            # The column, qualified: a bare `txid` is the selected txid::text, which sorts
            # 100000 before 99999 (and pages past the cursor skip or repeat events).
            order = "task_events.txid, task_events.event_id"
        if tenant_id is not None:
            where.append("tenant_id = %s")
            params.append(tenant_id)
        params.append(limit)
        with self._tx() as conn:
            rows = conn.execute(
                f"SELECT event_id, txid::text, {_EVENT_COLUMNS} FROM task_events "
                f"WHERE {' AND '.join(where)} ORDER BY {order} LIMIT %s",
                params,
            ).fetchall()
        return [_row_to_event(r) for r in rows]

    def task_has_events_after(
        self, cursor: str | None, *, task_id: str, tenant_id: str | None = None
    ) -> bool:
        """Whether the task has a committed event after `cursor`, in the task's own order
        (event_id: see task_events), exactly when task_events_after(task_id=) would
        return one."""
        _, event_id = _parse_cursor(cursor)
        if not is_uuid(task_id):
            return False
        where = "task_id = %s AND event_id > %s"
        params: list[Any] = [task_id, event_id]
        if tenant_id is not None:
            where += " AND tenant_id = %s"
            params.append(tenant_id)
        with self._tx() as conn:
            row = conn.execute(
                f"SELECT EXISTS (SELECT 1 FROM task_events WHERE {where})", params
            ).fetchone()
        return bool(row and row[0])

    # -- maintenance ---------------------------------------------------------------------------

    def task_maintain(
        self, now: datetime, backoff: Backoff, timeout_grace: float
    ) -> MaintenanceReport:
        report = MaintenanceReport()
        with self._tx() as conn:
            # The promotion and the rescuer take their candidates from task_queue (its PENDING
            # and RUNNING rows) and probe tasks by key (`= ANY(ARRAY(...))`, as the claim does):
            # joined instead, with statistics saying few tasks are RUNNING, the planner read all
            # of tasks (every task ever stored) to find them.
            conn.execute(_CLAIM_PLANNER)
            row = conn.execute(
                f"""WITH q AS (
                    UPDATE tasks SET status = 'QUEUED', queued_at = %(now)s, updated_at = %(now)s,
                        task_version = task_version + 1
                    WHERE task_id IN (
                        SELECT t.task_id FROM tasks t
                        WHERE t.task_id = ANY(ARRAY(
                            SELECT task_id FROM task_queue
                            WHERE status = 'PENDING' AND run_after <= %(now)s))
                          AND t.status = 'PENDING'
                          AND NOT EXISTS (SELECT 1 FROM task_dependencies d JOIN tasks p
                                          ON p.task_id = d.depends_on_id
                                          WHERE d.task_id = t.task_id
                                            AND p.status <> 'SUCCESS')
                        LIMIT 5000 FOR UPDATE SKIP LOCKED)
                    RETURNING task_id, tenant_id, attempt
                ), ev AS (
                    INSERT INTO task_events ({_EVENT_COLUMNS})
                    SELECT task_id, tenant_id, 'queued', 'PENDING', 'QUEUED', attempt, '{{}}',
                        %(now)s FROM q
                )
                SELECT count(*) FROM q""",
                {"now": now},
            ).fetchone()
            report.promoted = int(row[0]) if row else 0
            # A task's own constraints.timeout_grace_ms (schedules) extends the grace.
            stuck = conn.execute(
                """SELECT t.task_id, t.claim_token, t.attempt, t.max_attempts, t.deadline_at,
                    t.claim_expires_at, (t.constraints->>'timeout_grace_ms')::bigint
                FROM tasks t
                WHERE t.task_id = ANY(ARRAY(SELECT task_id FROM task_queue WHERE status = 'RUNNING'))
                  AND t.status = 'RUNNING'
                  AND (t.claim_expires_at < %(now)s OR (t.deadline_at < %(g)s
                    AND t.deadline_at < %(now)s - COALESCE(
                        (t.constraints->>'timeout_grace_ms')::bigint, 0)
                        * interval '1 millisecond'))
                LIMIT 5000 FOR UPDATE SKIP LOCKED""",
                {"now": now, "g": now - timedelta(seconds=timeout_grace)},
            ).fetchall()
            items = []
            for task_id, token, attempt, max_attempts, deadline, expires, grace_ms in stuck:
                outcome, res = rescue(
                    task_id, token, attempt, max_attempts, deadline, expires, now, backoff,
                    grace_ms,
                )
                items.append(_Apply(task_id, token, res, None, outcome.error))
                if res.status is TaskStatus.TIMEOUT:
                    report.timed_out += 1
                elif res.status is TaskStatus.DEAD_LETTER:
                    report.dead_lettered += 1
                else:
                    report.rescued += 1
            if items:
                self._leases_expire(conn, [(i.task_id, i.claim_token) for i in items], now)
                self._apply(conn, items, now)
            if report.promoted or report.rescued:
                conn.execute("SELECT pg_notify('creep_tasks', '')")
        if report.promoted or report.rescued:
            self._wake("creep_tasks", "")
        return report

    # -- queue speed: a completion batch and the next claim in one transaction -----------------

    def task_complete_and_claim(
        self, completions: Sequence[Completion], worker_id: str, task_types: Sequence[str],
        limit: int, now: datetime, claim_ttl: float, *, lanes: int = 1,
    ) -> tuple[list[str], list[ClaimedTask]]:
        """task_complete_many then task_claim, committed together: one round trip pair and
        one WAL flush instead of two. Returns (applied task ids, claimed tasks).

        With `lanes` > 1 (a worker's claim_lanes), a claim of MIN_LANE_CLAIM tasks or more
        runs as one transaction per claim lane at once (claim_lanes.py). If one lane fails
        and another commits, raises LaneFailed with what the committed lanes claimed and the
        completions left unwritten."""
        if lanes < 2 or limit < MIN_LANE_CLAIM or self.pool.max_size < _LANE_MIN_POOL:
            return self._complete_and_claim(
                completions, worker_id, task_types, limit, now, claim_ttl, None)
        parts: list[list[Completion]] = [[] for _ in range(LANES)]
        for c in completions:
            parts[lane_of(c.outcome.claim_token)].append(c)
        shares = lane_shares(limit, self._lane_claimed)
        others = [
            self._submit_lane(self._complete_and_claim, parts[lane], worker_id, task_types,
                              shares[lane], now, claim_ttl, lane)
            for lane in range(1, LANES)
        ]
        results: list[tuple[list[str], list[ClaimedTask]] | BaseException] = []
        try:
            results.append(self._complete_and_claim(
                parts[0], worker_id, task_types, shares[0], now, claim_ttl, 0))
        except BaseException as exc:  # the other lanes are waited for all the same
            results.append(exc)
        for future in others:
            try:
                results.append(future.result())
            except BaseException as exc:
                results.append(exc)
        self._lane_claimed = [len(r[1]) if isinstance(r, tuple) else 0 for r in results]
        return _lanes_joined(results, parts)

    def _complete_and_claim(
        self, completions: Sequence[Completion], worker_id: str, task_types: Sequence[str],
        limit: int, now: datetime, claim_ttl: float, lane: int | None,
    ) -> tuple[list[str], list[ClaimedTask]]:
        items = _apply_items(completions)
        requeued = any(i.resolution.status is TaskStatus.QUEUED for i in items)
        claimed: list[ClaimedTask] = []
        with self._tx() as conn, self._leases_batched(conn):
            applied = self._apply(conn, items, now) if items else []
            if requeued:
                conn.execute("SELECT pg_notify('creep_tasks', '')")
            if limit > 0 and task_types:
                claimed, _ = self._claim_rows(
                    conn, worker_id, task_types, limit, now, claim_ttl, lane=lane)
        if requeued:
            self._wake("creep_tasks", "")
        return applied, claimed

    def _submit_lane(
        self, fn: Callable[..., tuple[list[str], list[ClaimedTask]]], *args: Any
    ) -> Future[tuple[list[str], list[ClaimedTask]]]:
        """Run a lane after the first on the store's lane threads (made on first use; room
        for two callers, e.g. two workers on one store). Under the lock: close() cannot
        shut them down in between."""
        with self._lanes_lock:
            if self._lanes_closed:
                raise StorageError("the store is closed")
            if self._lane_pool is None:
                self._lane_pool = ThreadPoolExecutor(
                    2 * (LANES - 1), thread_name_prefix="creep-lane")
            return self._lane_pool.submit(fn, *args)

    # -- locks ---------------------------------------------------------------------------------

    def lock_acquire(
        self, lock_key: str, holder_id: str, ttl: float, now: datetime, purpose: str = ""
    ) -> str | None:
        expires = now + timedelta(seconds=check_lock_ttl(ttl, "ttl"))
        token = str(uuid.uuid4())
        with self._tx() as conn:
            row = conn.execute(
                """INSERT INTO task_locks AS l (lock_key, holder_id, token, state, acquired_at,
                    expires_at, released_at, purpose, created_at, updated_at)
                VALUES (%(k)s, %(h)s, %(t)s, 'active', %(now)s, %(exp)s, NULL, %(p)s, %(now)s,
                    %(now)s)
                ON CONFLICT (lock_key) DO UPDATE SET holder_id = %(h)s, token = %(t)s,
                    state = 'active', acquired_at = %(now)s, expires_at = %(exp)s,
                    released_at = NULL, purpose = %(p)s, updated_at = %(now)s
                WHERE l.state <> 'active' OR l.expires_at < %(now)s
                RETURNING token""",
                {"k": lock_key, "h": holder_id, "t": token, "now": now,
                 "exp": expires, "p": purpose},
            ).fetchone()
        return str(row[0]) if row else None

    def lock_renew(
        self, lock_key: str, holder_id: str, token: str, ttl: float, now: datetime
    ) -> bool:
        expires = now + timedelta(seconds=check_lock_ttl(ttl, "ttl"))
        with self._tx() as conn:
            # A clock gone back past acquired_at - ttl renews nothing (expires_at must stay
            # after acquired_at): the holder has lost the lock, and takes it again later.
            cur = conn.execute(
                "UPDATE task_locks SET expires_at = %(exp)s, updated_at = %(now)s "
                "WHERE lock_key = %(k)s AND token = %(t)s AND holder_id = %(h)s "
                "AND state = 'active' AND expires_at >= %(now)s AND acquired_at < %(exp)s",
                {"exp": expires, "now": now, "k": lock_key, "t": token, "h": holder_id},
            )
            return cur.rowcount == 1

    def lock_release(self, lock_key: str, token: str, now: datetime) -> bool:
        with self._tx() as conn:
            # Seed 003: released_at >= acquired_at, also from a holder whose clock went back.
            cur = conn.execute(
                "UPDATE task_locks SET state = 'released', "
                "released_at = GREATEST(%s, acquired_at), updated_at = %s "
                "WHERE lock_key = %s AND token = %s AND state = 'active'",
                (now, now, lock_key, token),
            )
            return cur.rowcount == 1

    # -- wake-ups ------------------------------------------------------------------------------

    def listener(self) -> Listener | None:
        return _PgListener(self.conninfo)

    def notify(self, channel: str, payload: str) -> None:
        with self._tx() as conn:
            conn.execute("SELECT pg_notify(%s, %s)", (channel, payload))

    def subscribe(self, callback: Callable[[str, str], None]) -> None:
        self._listeners.append(callback)

    def unsubscribe(self, callback: Callable[[str, str], None]) -> None:
        if callback in self._listeners:
            self._listeners.remove(callback)

    def _wake(self, channel: str, payload: str) -> None:
        for callback in list(self._listeners):
            callback(channel, payload)


class _PgListener:
    """LISTEN on a dedicated connection; reconnects after a failure. A hint only.

    With start_on_loop, the event loop watches the LISTEN socket itself: a NOTIFY wakes the
    loop directly instead of a thread that then wakes the loop (one thread hand-off less
    between a submit and its pickup; a hand-off costs milliseconds on a busy machine). The
    thread then only connects, reconnects and waits."""

    def __init__(self, conninfo: str) -> None:
        self.conninfo = conninfo
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._watched: int | None = None  # the socket the loop watches (loop thread only)

    def start(self, on_wake: Callable[[str, str], None]) -> None:
        """`on_wake` is called on the listener's thread."""
        self._spawn(lambda conn: self._relay(conn, on_wake), on_wake)

    def start_on_loop(
        self, loop: asyncio.AbstractEventLoop, on_wake: Callable[[str, str], None]
    ) -> None:
        """`on_wake` is called on `loop`'s thread, straight from the socket's reader."""
        self._loop = loop

        def catch_up(channel: str, payload: str) -> None:
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody to wake
                loop.call_soon_threadsafe(on_wake, channel, payload)

        self._spawn(lambda conn: self._watch(loop, conn, on_wake), catch_up)

    def _spawn(
        self, serve: Callable[[psycopg.Connection[Any]], None],
        catch_up: Callable[[str, str], None],
    ) -> None:
        def run() -> None:
            while not self._stop.is_set():
                try:
                    with psycopg.connect(self.conninfo, autocommit=True) as conn:
                        conn.execute("LISTEN creep_tasks")
                        conn.execute("LISTEN creep_cancel")
                        catch_up("creep_tasks", "")  # anything missed meanwhile
                        serve(conn)
                except psycopg.Error:
                    pass
                self._stop.wait(1.0)

        self._thread = threading.Thread(target=run, name="creep-pg-listener", daemon=True)
        self._thread.start()

    def _relay(self, conn: psycopg.Connection[Any], on_wake: Callable[[str, str], None]) -> None:
        while not self._stop.is_set():
            for note in conn.notifies(timeout=0.5):
                on_wake(note.channel, note.payload)

    def _watch(
        self, loop: asyncio.AbstractEventLoop, conn: psycopg.Connection[Any],
        on_wake: Callable[[str, str], None],
    ) -> None:
        pgconn, broken = conn.pgconn, threading.Event()
        fd = pgconn.socket

        def readable() -> None:
            try:
                pgconn.consume_input()
            except psycopg.Error:
                self._unwatch(loop)
                broken.set()  # the thread reconnects
                return
            while (note := pgconn.notifies()) is not None:
                on_wake(note.relname.decode(), note.extra.decode())

        def watch() -> None:
            if not self._stop.is_set():
                self._watched = fd
                loop.add_reader(fd, readable)

        try:
            # Notifications psycopg took in while LISTEN ran (a cancel, say) go out first.
            for note in conn.notifies(timeout=0):
                loop.call_soon_threadsafe(on_wake, note.channel, note.payload)
            loop.call_soon_threadsafe(watch)
        except RuntimeError:  # the loop is closed
            return
        while not (self._stop.is_set() or broken.is_set()):
            self._stop.wait(0.5)
        if self._watched is None:  # unwatched already (by stop() on the loop, or broken)
            return
        # The loop must stop watching before the connection closes (its fd may be reused).
        done = threading.Event()

        def unwatch() -> None:
            self._unwatch(loop)
            done.set()

        try:
            loop.call_soon_threadsafe(unwatch)
        except RuntimeError:
            return
        done.wait(5.0)

    def _unwatch(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._watched is not None:
            fd, self._watched = self._watched, None
            loop.remove_reader(fd)

    def stop(self) -> None:
        loop = self._loop
        if loop is not None and _running_loop() is loop:
            # Called on the loop (the worker's shutdown): stop watching here, first, or the
            # thread would wait for this very loop to do it while we wait for the thread.
            self._unwatch(loop)
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=3)


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def _commit_pipelined(store: Any, conn: psycopg.Connection[Any]) -> None:
    """Queue what rides along with a pipelined transaction (see pending_writes), then its
    COMMIT: sent with the statements before it, not after a round trip of its own."""
    pending_writes.flush(store, conn)
    conn.execute("COMMIT")


def _insert_statement(
    specs: Sequence[TaskSpec], tasks: Mapping[str, TaskOrder], has_dependants: set[str],
    now: datetime, audits: Sequence[AuditRow] = (),
) -> tuple[str, list[Any]]:
    """The insert of new tasks (see PostgresStore._insert) and its parameters; it returns
    the ids of the rows it inserted. The rows travel as one JSON array (orjson, in C; each
    input payload spliced in as the JSON it already is) that the server unpacks with
    json_to_recordset: binding a typed array per column cost psycopg ~20 us of Python per
    column per statement, which made a small batch (the API's group commits, one submit)
    cost hundreds of microseconds of client CPU. `audits`: audit rows written by the same
    statement, each only if its task is inserted (see _insert_query)."""
    rows: list[dict[str, Any]] = []
    for spec in specs:
        t = tasks[spec.task_id]
        rows.append({
            "task_id": t.task_id, "idempotency_key": t.idempotency_key,
            "request_hash": spec.request_hash, "tenant_id": t.tenant_id,
            "project_id": t.project_id, "env": t.env, "external_ref": t.external_ref,
            "task_type": t.task_type, "task_category": t.task_category,
            "description": t.description, "priority": t.priority,
            "timeout_ms": t.timeout_ms, "max_total_cost": t.max_total_cost,
            "currency": t.currency, "business_value_hint": t.business_value_hint,
            "status": t.status.value, "created_at": t.created_at,
            "queued_at": t.queued_at, "finished_at": t.finished_at,
            "updated_at": t.updated_at, "result_code": t.result_code,
            "result_message": t.result_message, "resource_hints": t.resource_hints,
            "constraints": t.constraints, "tenant_policies_version": t.tenant_policies_version,
            "tags": t.tags, "batch_id": t.batch_id,
            "input_payload": orjson.Fragment(spec.input_payload_json), "channel": t.channel,
            "correlation_id": t.correlation_id, "depends_on": t.depends_on,
            "max_attempts": t.max_attempts, "run_after": t.run_after,
            "has_dependants": t.task_id in has_dependants,
        })
    # Only the columns some row of this batch sets: the columns left out take the table's
    # defaults, and the server unpacks fewer fields (each costs it a text conversion).
    set_here = {c for r in rows for c, default in _DEFAULT_ITEMS if r[c] != default}
    kept = [c for c in _INSERT_TYPES if c not in _DEFAULTS or c in set_here]
    records = orjson.dumps(
        rows, default=_row_json_default, option=orjson.OPT_PASSTHROUGH_DATETIME).decode()
    if audits:
        return _insert_query(tuple(kept), audited=True), [records, now, audit_records(audits)]
    return _insert_query(tuple(kept)), [records, now]


def _row_json_default(value: Any) -> Any:
    """_insert_statement's rows: datetimes in UTC (orjson would round an offset with seconds,
    e.g. a historical zone's +00:19:32, to whole minutes), and what common.dumps writes for
    everything else (Decimal, sets, tuples)."""
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat()
    return json_default(value)


@functools.lru_cache(maxsize=64)
def _insert_query(kept: tuple[str, ...], audited: bool = False) -> str:
    """The text of _insert_statement's statement for these columns (built once per shape)."""
    names = ", ".join(kept)
    record = ", ".join(f"{c} {_INSERT_TYPES[c]}" for c in kept)
    # A JSON null unpacks to SQL NULL; an input payload of None is stored as JSON null, as
    # COPY and the other backend store it.
    values = names.replace("input_payload", "COALESCE(input_payload, 'null'::jsonb)")
    # One statement: the rows, then their creation events (see creation_events) built
    # in SQL from what was inserted; a key that exists already inserts neither. Audited: the
    # API's audit rows too, matched to `ins` (a lookup of tasks by (id, created_at) in a
    # statement of its own cost a round trip, and its plan, cached while tasks was small,
    # read all of tasks per batch).
    audit = f", aud AS ({AUDIT_CREATED_CTE})" if audited else ""
    return (
        f"""WITH ins AS (
            INSERT INTO tasks ({names})
            SELECT {values} FROM json_to_recordset(%s::json) AS r({record})
            ON CONFLICT (tenant_id, env, idempotency_key) DO NOTHING
            RETURNING task_id, tenant_id, task_type, priority, status, result_message
        ), ev AS (
            INSERT INTO task_events ({_EVENT_COLUMNS})
            SELECT i.task_id, i.tenant_id, e.etype, e.old, e.new, 0,
                CASE e.ord WHEN 1 THEN jsonb_build_object('task_type', i.task_type,
                    'priority', i.priority)
                WHEN 3 THEN jsonb_build_object('result_code', 'DEPENDENCY_FAILED',
                    'message', i.result_message)
                ELSE e.payload END, %b::timestamptz
            FROM ins i CROSS JOIN LATERAL (VALUES
                (1, 'created', NULL, 'PENDING', NULL::jsonb),
                (2, 'queued', 'PENDING', 'QUEUED', '{{}}'::jsonb),
                (3, 'cancelled', 'PENDING', 'CANCELLED', NULL::jsonb)
            ) e(ord, etype, old, new, payload)
            WHERE e.ord = 1 OR (e.ord = 2 AND i.status = 'QUEUED')
               OR (e.ord = 3 AND i.status = 'CANCELLED')
            ORDER BY i.task_id, e.ord
        ){audit}, note AS (  -- wake the workers, in this statement rather than one more round trip
            SELECT pg_notify('creep_tasks', '')
            WHERE EXISTS (SELECT 1 FROM ins WHERE status = 'QUEUED')
        )
        SELECT ins.task_id FROM ins LEFT JOIN note ON true"""
    )


#: Insert columns with their table default, as _insert_statement's rows hold it.
_DEFAULTS: dict[str, Any] = {
    "project_id": None, "external_ref": None, "task_category": None, "description": None,
    "max_total_cost": None, "business_value_hint": None, "finished_at": None,
    "result_code": None, "result_message": None, "resource_hints": [], "constraints": {},
    "tenant_policies_version": None, "tags": [], "batch_id": None, "channel": None,
    "depends_on": [], "has_dependants": False,
}
_DEFAULT_ITEMS = tuple(_DEFAULTS.items())
#: From this many plain tasks (is_plain) on, a submission is COPYed (see _copy_plain), whose
#: round trips then cost less than the server's work they save; fewer go pipelined.
COPY_MIN_TASKS = 64
_COPY_TASKS = f"COPY tasks ({', '.join(PLAIN_COLUMNS)}) FROM STDIN (FORMAT binary)"
_COPY_EVENTS = (
    "COPY task_events (task_id, tenant_id, event_type, from_status, to_status, payload, "
    "created_at) FROM STDIN (FORMAT binary)"
)


_INSERT_TYPES: dict[str, str] = {
    "task_id": "uuid", "idempotency_key": "text", "request_hash": "text", "tenant_id": "text",
    "project_id": "text", "env": "text", "external_ref": "text", "task_type": "text",
    "task_category": "text", "description": "text", "priority": "smallint",
    "timeout_ms": "bigint", "max_total_cost": "numeric", "currency": "text",
    "business_value_hint": "numeric", "status": "text", "created_at": "timestamptz",
    "queued_at": "timestamptz", "finished_at": "timestamptz", "updated_at": "timestamptz",
    "result_code": "text", "result_message": "text", "resource_hints": "jsonb",
    "constraints": "jsonb", "tenant_policies_version": "text", "tags": "jsonb",
    "batch_id": "text", "input_payload": "jsonb", "channel": "text", "correlation_id": "text",
    "depends_on": "jsonb", "max_attempts": "integer", "run_after": "timestamptz",
    "has_dependants": "boolean",
}


def _lanes_joined(
    results: Sequence[tuple[list[str], list[ClaimedTask]] | BaseException],
    parts: Sequence[Sequence[Completion]],
) -> tuple[list[str], list[ClaimedTask]]:
    """The lanes' results as one (applied ids, claimed tasks): lane by lane, each lane's
    claims in claim order. When some lanes failed: LaneFailed if others committed, else
    the first lane's error. An error that is not a storage failure (a bug) is raised as it
    is, and what other lanes claimed then stays claimed until the claims expire (the
    rescuer requeues them, counting the attempt), as for any worker that crashes."""
    failed = [(lane, r) for lane, r in enumerate(results) if isinstance(r, BaseException)]
    done = [r for r in results if not isinstance(r, BaseException)]
    if not failed:
        return [i for r in done for i in r[0]], [c for r in done for c in r[1]]
    for _, exc in failed:
        if not isinstance(exc, CreepError):
            raise exc
    first = failed[0][1]
    if not done:
        raise first
    raise LaneFailed(
        f"{len(failed)} of {len(results)} claim lanes failed: {first}",
        [c for r in done for c in r[1]], [c for lane, _ in failed for c in parts[lane]],
    ) from first


def _apply_items(completions: Sequence[Completion]) -> list[_Apply]:
    return [
        _Apply(c.outcome.task_id, c.outcome.claim_token, c.resolution, _result_json(c.outcome),
               c.outcome.error)
        for c in completions
    ]


def _is_plain_success(item: _Apply) -> bool:
    """A success with nothing but its result to write (as SQLite's _apply_document)."""
    res = item.resolution
    return (res.status is TaskStatus.SUCCESS and res.result_code == "OK"
            and not res.result_message and item.error is None and res.run_after is None
            and res.charge_attempt and res.event_type == "succeeded")


def _success_params(items: list[_Apply], now: datetime) -> tuple[Any, ...]:
    return ([i.task_id for i in items], [i.claim_token for i in items],
            [i.result_json for i in items], now, now, now)


#: _apply's statement for plain successes: what the general one does for status SUCCESS,
#: result code OK, no message, no error, no run_after, the attempt charged.
_SUCCESS_APPLY_SQL = f"""WITH o AS (
        SELECT * FROM unnest(%b::uuid[], %b::uuid[], %b::jsonb[]) AS o(id, tok, result)
    ), done AS (
        UPDATE tasks t SET status = 'SUCCESS', result_code = 'OK', result_message = NULL,
            result_payload = COALESCE(o.result, t.result_payload), finished_at = %s,
            progress = 100, claimed_by = NULL, claim_token = NULL, claim_expires_at = NULL,
            deadline_at = NULL, cancel_requested = false,
            task_version = t.task_version + 1, updated_at = %s
        FROM o WHERE t.task_id = o.id AND t.claim_token = o.tok
          AND t.status = CASE WHEN o.tok IS NOT NULL THEN 'RUNNING' END
        RETURNING t.task_id, t.tenant_id, t.status, t.has_dependants, t.attempt, t.has_hints
    ), ev AS (
        INSERT INTO task_events ({_EVENT_COLUMNS})
        SELECT task_id, tenant_id, 'succeeded', 'RUNNING', 'SUCCESS', attempt,
            '{{"result_code": "OK"}}', %s FROM done
    )
    SELECT task_id, status, has_dependants, has_hints FROM done"""


def _result_json(outcome: Outcome) -> str | None:
    if outcome.kind is not OutcomeKind.SUCCEEDED:
        return None
    raw = outcome.result_json if outcome.result_json is not None else dumps(outcome.result)
    return raw.decode()


def _probe(conn: psycopg.Connection[Any], query: str, params: Sequence[Any]) -> list[Any]:
    """Run `query` under _PROBE_SETTINGS, then restore the planner: one round trip."""
    with conn.pipeline():
        conn.execute(_PROBE_PLANNER)
        cur = conn.execute(query, params)
        for name in _PROBE_SETTINGS:
            conn.execute(f"RESET {name}")
    return cur.fetchall()


def _insert_events(conn: psycopg.Connection[Any], rows: list[tuple[Any, ...]]) -> None:
    if not rows:
        return
    conn.execute(
        f"INSERT INTO task_events ({_EVENT_COLUMNS}) SELECT * FROM unnest(%b::uuid[], "
        "%b::text[], %b::text[], %b::text[], %b::text[], %b::integer[], %b::jsonb[], "
        "%b::timestamptz[])",
        [[r[i] for r in rows] for i in range(8)], binary=True,
    )


def _row_to_event(r: Sequence[Any]) -> TaskEvent:
    return TaskEvent(
        event_id=r[0], cursor=f"{r[1]}.{r[0]}", task_id=r[2], tenant_id=r[3], event_type=r[4],
        from_status=r[5], to_status=r[6], attempt=r[7], payload=r[8], created_at=r[9],
    )


def _parse_cursor(cursor: str | None) -> tuple[str, int]:
    if not cursor:
        return "0", 0
    txid, _, event_id = cursor.partition(".")
    if not (txid.isdigit() and event_id.isdigit()):
        raise ValidationError.single("cursor", "is not a cursor this store issued")
    return txid, int(event_id)


#: How long opening a store waits for PostgreSQL to accept a connection (it may be starting).
_CONNECT_WAIT_S = 15.0
#: Refusals that waiting does not change: an unknown database or role, failed
#: authentication, a URL libpq cannot use (an invalid sslmode, an unknown option).
_LASTING_REFUSAL = re.compile(
    r"does not exist|authentication failed|pg_hba\.conf|permission denied|no password supplied"
    r"|invalid [\w ]*(?:value|option|parameter)|bad value for"
)


def _wait_for_server(conninfo: str, url: str) -> None:
    """Return once PostgreSQL accepts a connection: up to _CONNECT_WAIT_S for one that may
    still be starting (refused, unreachable, starting up), at once for a lasting refusal.
    The error is one line with libpq's reason (the pool would only say it timed out, after
    logging each failed attempt)."""
    deadline = time.monotonic() + _CONNECT_WAIT_S
    while True:
        try:
            psycopg.connect(conninfo).close()
            return
        except psycopg.Error as exc:
            reason = " ".join(str(exc).split())
            if time.monotonic() >= deadline or _LASTING_REFUSAL.search(reason):
                raise StorageError(
                    f"cannot connect to PostgreSQL at {_redact(url)}: {reason}") from None
        time.sleep(0.5)


def _redact(url: str) -> str:
    parts = urlsplit(url)
    if parts.password:
        return url.replace(f":{parts.password}@", ":***@")
    return url


_CREATE_ATTEMPTS = 5
_IDEMPOTENCY_RACE = "idempotency race; retry"

#: Locks, in task_id order, the open (PENDING or QUEUED) tasks that depend on `ids`, directly
#: or through other open tasks; with `open_roots`, only below roots that are open themselves,
#: and those roots with them (a cancellation by the user).
_LOCK_OPEN_DEPENDANTS = """
    WITH RECURSIVE c(task_id) AS (
        SELECT d.task_id FROM task_dependencies d
        JOIN tasks t ON t.task_id = d.task_id AND t.status IN ('PENDING', 'QUEUED')
        WHERE d.depends_on_id = ANY(%(ids)s::uuid[])
          AND (NOT %(open_roots)s OR EXISTS (
              SELECT 1 FROM tasks r WHERE r.task_id = d.depends_on_id
                AND r.status IN ('PENDING', 'QUEUED')))
        UNION
        SELECT d.task_id FROM task_dependencies d JOIN c ON d.depends_on_id = c.task_id
        JOIN tasks t ON t.task_id = d.task_id AND t.status IN ('PENDING', 'QUEUED')
    )
    SELECT task_id FROM tasks
    WHERE (task_id IN (SELECT task_id FROM c)
           OR (%(open_roots)s AND task_id = ANY(%(ids)s::uuid[])))
      AND status IN ('PENDING', 'QUEUED')
    ORDER BY task_id FOR UPDATE"""


def _lost_race(exc: StorageError) -> bool:
    """A creation that lost a race to a concurrent one and may simply be tried again."""
    return str(exc) == _IDEMPOTENCY_RACE or isinstance(
        exc.__cause__, pg_errors.DeadlockDetected | pg_errors.SerializationFailure)


def _storage_error(exc: psycopg.Error) -> CreepError:
    """A database error as creep's: a task id that exists already is the caller's conflict
    (a 409, not a storage outage); anything else a StorageError."""
    if isinstance(exc, pg_errors.UniqueViolation) and exc.diag.constraint_name == "tasks_pkey":
        return ConflictError("a task with this task_id exists already (task ids are unique)")
    return StorageError(str(exc))
