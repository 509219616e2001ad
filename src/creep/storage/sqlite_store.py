"""The embedded backend: one SQLite file in WAL mode, writers serialised by BEGIN IMMEDIATE."""

from __future__ import annotations

import os
import sqlite3
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from operator import itemgetter
from typing import Any
from urllib.parse import parse_qs, urlsplit

import orjson

from creep.domain.errors import (
    ConflictError,
    IllegalTransition,
    NotFound,
    StorageError,
    TaskDeleted,
    ValidationError,
    VersionConflict,
)
from creep.domain.events import TaskEvent
from creep.domain.lock import check_lock_ttl
from creep.domain.outcomes import Backoff, Outcome, OutcomeKind, Resolution
from creep.domain.task import RETRYABLE_FROM, TaskOrder, TaskStatus, check_transition
from creep.domain.task_spec import TaskSpec, retries_allowed
from creep.ports import (
    ClaimedTask,
    Completion,
    HeartbeatResult,
    Listener,
    MaintenanceReport,
    TaskFilter,
)
from creep.storage import pending_writes
from creep.storage.asset_pages import AssetPagesMixin  # REST API pages
from creep.storage.common import (
    BATCH_PURGING,
    CANCELLED_WHILE_ENDING,
    INSERT_COLUMNS,
    OPTIONAL_DEFAULTS,
    PLAIN_COLUMNS,
    SQLITE_EVENTS_OF,
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
from creep.storage.metrics_store import SqliteMetricsMixin  # /metrics
from creep.storage.sqlite_api import SqliteApiMixin
from creep.storage.sqlite_artifacts import SqliteArtifactsMixin  # artifacts + HTTP workers
from creep.storage.sqlite_assets import SqliteAssets
from creep.storage.sqlite_bulk import (
    MAX_STATEMENT_ROWS,
    flat_rows,
    insert_flat,
    insert_rows,
    rows_per_statement,
)
from creep.storage.sqlite_checkpoint import WalCheckpointer
from creep.storage.sqlite_schedules import SqliteSchedulesMixin  # schedules

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_IDX = {name: i for i, name in enumerate(TASK_COLUMNS)}
_TS_COLUMNS = (
    "created_at", "queued_at", "started_at", "finished_at", "updated_at", "run_after",
    "claim_expires_at", "deleted_at",
)
_JSON_COLUMNS = (
    "lease_ids", "resource_hints", "constraints", "tags", "input_payload", "result_payload",
    "depends_on",
)
_SYNC_LEVELS = {"OFF", "NORMAL", "FULL", "EXTRA"}
_TS_IDX = tuple(_IDX[n] for n in _TS_COLUMNS)
_JSON_IDX = tuple(_IDX[n] for n in _JSON_COLUMNS)
_DECIMAL_IDX = (_IDX["max_total_cost"], _IDX["business_value_hint"])
_STATUS_I, _CANCEL_I = _IDX["status"], _IDX["cancel_requested"]
_STATUS = {s.value: s for s in TaskStatus}
#: WAL pages before an automatic checkpoint, in the committing writer: the backstop behind
#: the store's background checkpoints (sqlite_checkpoint). It restarts the log, and finds
#: its pages already copied by them.
_WAL_AUTOCHECKPOINT = 16384

#: How long a writer waits for the database (SQLite busy_timeout, and this process's writer
#: lock in front of it) before failing with "database is locked".
_BUSY_TIMEOUT_S = 60.0


def us(dt: datetime) -> int:
    """Microseconds since the epoch: SQLite's timestamp representation."""
    delta = dt - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def from_us(value: int | None) -> datetime | None:
    if value is None:
        return None
    return _EPOCH + timedelta(microseconds=value)


def _row_to_task(row: Sequence[Any]) -> TaskOrder:
    v = list(row)
    for i in _TS_IDX:
        x = v[i]
        if x is not None:
            v[i] = _EPOCH + timedelta(microseconds=x)
    for i in _JSON_IDX:
        x = v[i]
        if x is not None:
            v[i] = orjson.loads(x)
    for i in _DECIMAL_IDX:
        if v[i] is not None:
            v[i] = Decimal(v[i])
    v[_STATUS_I] = _STATUS[v[_STATUS_I]]
    v[_CANCEL_I] = bool(v[_CANCEL_I])
    return TaskOrder(*v)


def _ids_json(ids: Sequence[str]) -> str:
    return orjson.dumps(list(ids)).decode()


@dataclass(slots=True)
class _Apply:
    """One fenced transition of a running task."""

    task_id: str
    claim_token: str
    resolution: Resolution
    result_json: bytes | None
    error: str | None


#: Of the ids given (a JSON list), those no task holds that ledger entries or leases still name:
#: a task deleted by retention (refuse_reused_task_ids). Through the by-task indexes.
_REUSED_IDS = (
    "SELECT j.value FROM json_each(?) j WHERE NOT EXISTS (SELECT 1 FROM tasks t "
    "WHERE t.task_id = j.value) AND (EXISTS (SELECT 1 FROM ledger_entries l WHERE "
    f"l.{SQLITE_EVENTS_OF} l.task_id = j.value) OR EXISTS (SELECT 1 FROM leases s WHERE "
    f"s.{SQLITE_EVENTS_OF} s.task_id = j.value))"
)

class SqliteStore(
    SqliteSchedulesMixin, SqliteAssets, SqliteApiMixin, SqliteArtifactsMixin,
    AssetPagesMixin, SqliteMetricsMixin,
):  # schedules, assets, API tables, artifacts, REST pages: see the mixins
    dialect = "sqlite"
    _events_of = SQLITE_EVENTS_OF  # retention, execution sync: task_events by-task index (0009)

    def __init__(self, url: str) -> None:
        self.url = url
        parts = urlsplit(url)
        path = parts.path[1:] if parts.path.startswith("/") else parts.path
        if parts.netloc:
            raise ValidationError.single(
                "database_url", "a SQLite URL is sqlite:///relative/path or sqlite:////abs/path"
            )
        if not path or path == ":memory:":
            raise ValidationError.single(
                "database_url", "SQLite needs a file path (in-memory databases are per connection)"
            )
        self.path = path
        query = parse_qs(parts.query)
        sync = query.get("synchronous", ["FULL"])[0].upper()
        if sync not in _SYNC_LEVELS:
            raise ValidationError.single(
                "database_url", f"synchronous must be one of {sorted(_SYNC_LEVELS)}"
            )
        self.synchronous = sync
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._all_lock = threading.Lock()
        self._write_lock = threading.RLock()
        self._listeners: list[Callable[[str, str], None]] = []
        self._checkpointer = WalCheckpointer(path, synchronous=sync)

    # -- connections ---------------------------------------------------------------------------

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            try:
                conn = self._open()
            except sqlite3.Error as exc:  # no such directory, not a database, no permission
                raise StorageError(f"cannot open SQLite database {self.path}: {exc}") from exc
            self._local.conn = conn
            with self._all_lock:
                self._all.append(conn)
        return conn

    def _open(self) -> sqlite3.Connection:
        """A new connection with the settings every connection of this store has."""
        conn = sqlite3.connect(
            self.path, isolation_level=None, check_same_thread=False, timeout=60.0
        )
        try:
            conn.execute("PRAGMA journal_mode=WAL")
        except sqlite3.Error:  # e.g. not a database: the settings below would fail as well
            conn.close()
            raise
        conn.execute(f"PRAGMA synchronous={self.synchronous}")
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute(f"PRAGMA busy_timeout={int(_BUSY_TIMEOUT_S * 1000)}")
        conn.execute("PRAGMA cache_size=-65536")
        conn.execute("PRAGMA temp_store=MEMORY")
        conn.execute(f"PRAGMA wal_autocheckpoint={_WAL_AUTOCHECKPOINT}")
        # ... and after a checkpoint the WAL file is cut back rather than kept at its peak.
        conn.execute("PRAGMA journal_size_limit=67108864")
        return conn

    @contextmanager
    def _write(self, within: sqlite3.Connection | None = None) -> Iterator[sqlite3.Connection]:
        if within is not None:  # the caller's open transaction (a schedule firing) owns it
            yield within
            return
        conn = self._conn()
        # Writers of this process queue on a lock before BEGIN IMMEDIATE: SQLite's busy
        # handler would make a waiting writer sleep 10-100 ms per retry (a worker's claim
        # behind its own maintenance sweep), where the lock hands over as soon as the other
        # commits. Other processes are still kept out by BEGIN IMMEDIATE and busy_timeout.
        try:
            with self._writer_turn():
                conn.execute("BEGIN IMMEDIATE")
                try:
                    yield conn
                    pending_writes.flush(self, conn)  # e.g. the API's audit row, same tx
                except BaseException:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise
                conn.execute("COMMIT")
            self._checkpointer.committed()
        except sqlite3.OperationalError as exc:
            # "database is locked" past busy_timeout, disk I/O, a full disk: a storage
            # failure, which callers wait out (a worker retries), as on PostgreSQL.
            raise StorageError(str(exc)) from exc

    @contextmanager
    def _writer_turn(self) -> Iterator[None]:
        """This process's turn to write (see _write). Bounded like SQLite's own busy_timeout,
        so a writer stuck behind a lock holder fails as 'database is locked' instead of
        waiting forever."""
        if not self._write_lock.acquire(timeout=_BUSY_TIMEOUT_S):
            raise sqlite3.OperationalError("database is locked (waited for this process's writers)")
        try:
            yield
        finally:
            self._write_lock.release()

    def close(self) -> None:
        self._checkpointer.stop()
        # A store used again checkpoints again.
        self._checkpointer = WalCheckpointer(self.path, synchronous=self.synchronous)
        with self._all_lock:
            for conn in self._all:
                with suppress(sqlite3.ProgrammingError):
                    conn.close()
            self._all.clear()
        self._local = threading.local()

    # -- schema --------------------------------------------------------------------------------

    def migrate(self, target: int | None = None) -> list[int]:
        try:
            return self._migrate(target)
        except sqlite3.Error as exc:  # locked past busy_timeout, a read-only file, a full disk
            raise StorageError(f"cannot migrate {self.path}: {exc}") from exc

    def _migrate(self, target: int | None) -> list[int]:
        conn = self._conn()
        applied: list[int] = []
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                "version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at INTEGER NOT NULL)"
            )
            done = {r[0] for r in conn.execute("SELECT version FROM schema_migrations")}
            migrations = load_migrations("sqlite")
            check_known_schema(done, migrations, target)
            for m in migrations:
                if m.version in done or (target is not None and m.version > target):
                    continue
                try:
                    for statement in _split_sql(m.sql):
                        conn.execute(statement)
                except sqlite3.Error as exc:  # rolled back below, with the ones before it
                    raise migration_failed(m, exc, done) from exc
                conn.execute(
                    "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)",
                    (m.version, m.name, us(datetime.now(UTC))),
                )
                applied.append(m.version)
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        return applied

    def schema_version(self) -> int:
        if not os.path.exists(self.path):
            # Asked first by a process that does not migrate: no schema, and no empty file
            # left behind at a mistyped path by opening it.
            return 0
        try:
            row = self._conn().execute("SELECT max(version) FROM schema_migrations").fetchone()
        except sqlite3.OperationalError:
            return 0
        return int(row[0] or 0)

    # -- creating tasks ------------------------------------------------------------------------

    def task_prepare_many(self, specs: Sequence[TaskSpec], now: datetime) -> PreparedPlain | None:
        """What task_create_many(specs, now) builds before it writes, for plain specs (is_plain;
        None for others): the new tasks and their rows in insert order. Pure Python, no
        database: a bulk submission prepares chunk k+1 on another thread while chunk k is
        written (SQLite's C code runs without the GIL)."""
        if not specs or not all(map(is_plain, specs)):
            return None
        tasks = {s.task_id: new_task(s, initial_status(s, {}, now), now) for s in specs}
        if len(tasks) != len(specs):
            return None  # task_create_many refuses them
        now_us = us(now)
        rows = [_plain_row(tasks[s.task_id], s, now_us) for s in specs]
        rows.sort(key=_plain_priority_desc)
        return PreparedPlain(
            specs, now, tasks, flat_rows(rows, len(PLAIN_COLUMNS), MAX_STATEMENT_ROWS))

    def task_create_many(
        self, specs: Sequence[TaskSpec], now: datetime, *,
        within: sqlite3.Connection | None = None,  # join an open transaction (schedules)
        prepared: PreparedPlain | None = None,  # task_prepare_many(specs, now)'s answer
    ) -> list[TaskOrder]:
        if not specs:
            return []
        if prepared is not None and (prepared.specs is not specs or prepared.now != now):
            prepared = None
        # One INSERT statement undoes itself when a constraint fails it (SQLite's ABORT);
        # several need a savepoint around them. Fewer statements: under API load each one
        # waits for the GIL again after SQLite released it.
        one_statement = len(specs) <= _ONE_STATEMENT and not any(s.depends_on for s in specs)
        with self._write(within) as conn:
            given = given_task_ids(specs)
            if given:
                refuse_reused_task_ids([r[0] for r in conn.execute(
                    _REUSED_IDS, (_ids_json(given),)).fetchall()])
            # (Orders depending on others of this submission that are replays: see there.)
            submitted = specs
            lookup = self._replay_lookup(conn)
            plan, specs = bind_replayed_dependencies(specs, lookup)
            try:
                dep_status = self._dependency_status(conn, specs, submitted)
            except ValidationError:
                aside = None if plan is not None else set_replays_aside(specs, lookup)
                if aside is None:
                    raise
                plan, specs = aside, aside.fresh
                dep_status = self._dependency_status(conn, specs, submitted)
            if plan is not None:
                prepared = None
            try:
                if not one_statement:
                    conn.execute("SAVEPOINT fast_insert")
                out = self._insert_new(conn, specs, dep_status, now, prepared)
                if not one_statement:
                    conn.execute("RELEASE fast_insert")
            except sqlite3.IntegrityError:
                # Some idempotency key exists already: go row by row, replaying or refusing.
                if not one_statement:
                    conn.execute("ROLLBACK TO fast_insert")
                    conn.execute("RELEASE fast_insert")
                out = self._insert_with_replays(conn, specs, dep_status, now)
            if plan is not None:
                out = plan.resolve({s.task_id: t for s, t in zip(specs, out, strict=True)})
        if any(t.status is TaskStatus.QUEUED and not t.replayed for t in out):
            self._wake("creep_tasks", "")
        return out

    def _dependency_status(
        self, conn: sqlite3.Connection, specs: Sequence[TaskSpec],
        submitted: Sequence[TaskSpec],  # as sent: errors name an order by its place there
    ) -> dict[str, str]:
        if not any(s.depends_on for s in specs):  # the bulk common case
            return {}
        in_batch = {s.task_id: s for s in specs}
        wanted = {d for s in specs for d in s.depends_on if d not in in_batch}
        found: dict[str, tuple[str, str]] = {}
        if wanted:
            # A deleted task (in the recycle bin) is unknown to new dependants.
            for task_id, status, tenant in conn.execute(
                "SELECT task_id, status, tenant_id FROM tasks "
                "WHERE task_id IN (SELECT value FROM json_each(?)) AND deleted_at IS NULL",
                (_ids_json(sorted(wanted)),),
            ):
                found[task_id] = (status, tenant)
        return check_dependencies(specs, found, submitted)

    def _insert_new(
        self, conn: sqlite3.Connection, specs: Sequence[TaskSpec], dep_status: dict[str, str],
        now: datetime, prepared: PreparedPlain | None = None,
    ) -> list[TaskOrder]:
        from creep.domain.dag import topological_order

        if not specs:  # every spec was a replay
            return []
        if prepared is not None:
            last = insert_flat(conn, _PLAIN_INSERT, len(PLAIN_COLUMNS), prepared.statements)
            self._creation_events(conn, specs, prepared.tasks, last, us(now))
            return [prepared.tasks[s.task_id] for s in specs]
        by_id = {s.task_id: s for s in specs}
        if len(by_id) != len(specs):
            raise ValidationError.single("task_id", "task ids in one submission must be unique")
        if any(s.depends_on for s in specs):
            order = topological_order({s.task_id: s.depends_on for s in specs})
        else:
            order = [s.task_id for s in specs]
        status = dict(dep_status)
        tasks: dict[str, TaskOrder] = {}
        for task_id in order:
            spec = by_id[task_id]
            task = new_task(spec, initial_status(spec, status, now), now, status)
            status[task_id] = task.status
            tasks[task_id] = task
        now_us = us(now)
        has_dependants = {d for s in specs for d in s.depends_on}
        deps = [(s.task_id, d) for s in specs for d in s.depends_on]
        # One statement per chunk of rows, not per row (sqlite_bulk.py says why), binding
        # only the columns that vary: each bound value costs the writer about as much as a
        # B-tree insert, and the columns left out take the table's defaults.
        #
        # Rows are laid out in claim order: a claim takes the highest priorities first, and
        # rows of one priority stored side by side put a claimed batch on a few pages instead
        # of one page per task (what a commit writes). The sort is stable and the batch shares
        # created_at, so the claim order among equal priorities (rowid) stays submission order.
        if all(map(is_plain, specs)):
            plain = [_plain_row(tasks[s.task_id], s, now_us) for s in specs]
            plain.sort(key=_plain_priority_desc)
            last = insert_rows(
                conn, _PLAIN_INSERT, len(PLAIN_COLUMNS), plain, MAX_STATEMENT_ROWS
            )
        else:
            rows = [_task_row(tasks[s.task_id], s, s.task_id in has_dependants) for s in specs]
            rows.sort(key=_by_priority_desc)
            cols = [*_PLAIN_IDX, *(i for i, d in _OPTIONAL if any(r[i] != d for r in rows))]
            pick = itemgetter(*cols)
            head = f"INSERT INTO tasks ({', '.join(INSERT_COLUMNS[i] for i in cols)})"
            last = insert_rows(conn, head, len(cols), [pick(r) for r in rows])
        self._creation_events(conn, specs, tasks, last, now_us)
        if deps:
            conn.executemany(
                "INSERT INTO task_dependencies (task_id, depends_on_id) VALUES (?, ?)", deps
            )
            outside = sorted(has_dependants - set(by_id))
            if outside:
                conn.execute(
                    "UPDATE tasks SET has_dependants = 1 "
                    "WHERE task_id IN (SELECT value FROM json_each(?))",
                    (_ids_json(outside),),
                )
        return [tasks[s.task_id] for s in specs]

    @staticmethod
    def _creation_events(
        conn: sqlite3.Connection, specs: Sequence[TaskSpec], tasks: dict[str, TaskOrder],
        last: int | None, now_us: int,
    ) -> None:
        """The creation events (creation_events) from the rows just inserted, in their order:
        rowids of one transaction's inserts run on from the largest one before them, so the
        new rows are the last len(specs) rowids up to `last`."""
        before = (last or 0) - len(specs)
        expected = sum(
            2 if t.status in _TWO_EVENTS else 1 for t in (tasks[s.task_id] for s in specs)
        )
        base = conn.execute(_LAST_EVENT_ID).fetchone()[0]
        written = conn.execute(_CREATION_EVENTS_SQL, (before, now_us, base)).rowcount
        if written != expected:
            raise StorageError(f"creation events: wrote {written}, expected {expected}")

    def _insert_with_replays(
        self, conn: sqlite3.Connection, specs: Sequence[TaskSpec], dep_status: dict[str, str],
        now: datetime,
    ) -> list[TaskOrder]:
        plan = plan_replays(specs, self._replay_lookup(conn))
        try:
            created = {t.task_id: t for t in self._insert_new(conn, plan.fresh, dep_status, now)}
        except sqlite3.IntegrityError as exc:
            if "tasks.task_id" in str(exc):  # no key matched: an id names another task
                raise ConflictError(
                    "a task with this task_id exists already (task ids are unique)") from exc
            raise
        return plan.resolve(created)

    @staticmethod
    def _replay_lookup(
        conn: sqlite3.Connection,
    ) -> Callable[[TaskSpec], tuple[TaskOrder, str] | None]:
        """The existing task (and its request hash) with an order's idempotency key."""
        def lookup(spec: TaskSpec) -> tuple[TaskOrder, str] | None:
            row = conn.execute(
                f"SELECT {TASK_SELECT}, request_hash FROM tasks "
                "WHERE tenant_id = ? AND env = ? AND idempotency_key = ?",
                (spec.tenant_id, spec.env, spec.idempotency_key),
            ).fetchone()
            return None if row is None else (_row_to_task(row[:-1]), row[-1])

        return lookup

    # -- reading tasks -------------------------------------------------------------------------

    def task_get(self, task_id: str, tenant_id: str | None = None) -> TaskOrder:
        row = self._conn().execute(
            f"SELECT {TASK_SELECT} FROM tasks WHERE task_id = ?", (task_id,)
        ).fetchone()
        if row is None or (tenant_id is not None and row[_IDX["tenant_id"]] != tenant_id):
            raise NotFound("task", task_id)
        return _row_to_task(row)

    def task_get_many(
        self, task_ids: Sequence[str], tenant_id: str | None = None
    ) -> dict[str, TaskOrder]:
        if not task_ids:
            return {}
        rows = self._conn().execute(
            f"SELECT {TASK_SELECT} FROM tasks WHERE task_id IN (SELECT value FROM json_each(?))",
            (_ids_json(task_ids),),
        ).fetchall()
        tasks = (_row_to_task(row) for row in rows)
        return {t.task_id: t for t in tasks if tenant_id is None or t.tenant_id == tenant_id}

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
                where.append(f"{column} = ?")
                params.append(value)
        if flt.tag is not None:
            where.append("EXISTS (SELECT 1 FROM json_each(tasks.tags) WHERE value = ?)")
            params.append(flt.tag)
        if flt.created_from is not None:
            where.append("created_at >= ?")
            params.append(us(flt.created_from))
        if flt.created_to is not None:
            where.append("created_at < ?")
            params.append(us(flt.created_to))
        if after:
            created, last_id = sortable_cursor(after, micros=True)
            where.append("(created_at, task_id) < (?, ?)")
            params.extend([created, last_id])
        params.append(limit)
        rows = self._conn().execute(
            f"SELECT {TASK_SELECT} FROM tasks WHERE {' AND '.join(where)} "
            "ORDER BY created_at DESC, task_id DESC LIMIT ?",
            params,
        ).fetchall()
        return [_row_to_task(r) for r in rows]

    @staticmethod
    def list_cursor(task: TaskOrder) -> str:
        return f"{us(task.created_at)}/{task.task_id}"

    # -- the queue -----------------------------------------------------------------------------

    def task_claim(
        self, worker_id: str, task_types: Sequence[str], limit: int, now: datetime,
        claim_ttl: float, claim_token: str | None = None,
    ) -> list[ClaimedTask]:
        if limit <= 0 or not task_types:
            return []
        with self._write() as conn:
            rows, token = self._claim_rows(conn, worker_id, task_types, limit, now, claim_ttl,
                                           token=claim_token)
        return _claimed(rows, token)

    def _claim_rows(
        self, conn: sqlite3.Connection, worker_id: str, task_types: Sequence[str], limit: int,
        now: datetime, claim_ttl: float, tenant_id: str | None = None,
        token: str | None = None,
    ) -> tuple[list[Any], str]:
        """The claim inside a write transaction: the claimed rows and their claim token (a
        new one unless `token` is given: an HTTP worker's claim_id). With `tenant_id`, only
        that tenant's tasks."""
        now_us = us(now)
        token = token or str(uuid.uuid4())
        # Tasks with resource_hints first: leased and claimed together, or left QUEUED.
        hinted = self._claim_hinted(
            conn, worker_id, token, task_types, limit, now, claim_ttl, tenant_id
        )
        # Plain claims select and update by rowid (no detour through the task_id index) and
        # return compact rows: the fields a worker needs plus the whole claimed row as one
        # JSON array, decoded only when a handler reads ctx.task (see _claimed). Handing
        # ~45 separate columns to Python cost more than the row update itself.
        # Each statement returns one row (a JSON document), not one row per task: every
        # row stepped out of SQLite takes the GIL back, and while the event loop runs
        # handlers each such take can wait a whole switch interval (5 ms), which made a
        # 500-task claim beside a busy loop take seconds. So the claim picks its rowids,
        # updates them, writes their 'started' events and reads them back, all set-based.
        if len(hinted) >= limit:
            return hinted, token
        picked = conn.execute(
            _CLAIM_PICK_SQL, (now_us, _ids_json(task_types), limit - len(hinted), tenant_id),
        ).fetchone()[0]
        if picked == "[]":
            return hinted, token
        conn.execute(
            _CLAIM_SQL,
            (now_us, worker_id, token, now_us + int(claim_ttl * 1e6), picked),
        )
        conn.execute(_CLAIM_EVENTS_SQL, (picked, dumps({"worker_id": worker_id}), now_us))
        rows = orjson.loads(conn.execute(_CLAIM_ROWS_SQL, (picked,)).fetchone()[0])
        return [*hinted, *rows], token

    def task_heartbeat(
        self, worker_id: str, claims: Sequence[tuple[str, str]], now: datetime, claim_ttl: float
    ) -> HeartbeatResult:
        result = HeartbeatResult()
        if not claims:
            return result
        tokens = dict(claims)
        with self._write() as conn:
            # One row back, not one per claim (see _claim_rows).
            rows = orjson.loads(conn.execute(
                "SELECT json_group_array(json_array(task_id, claim_token, status, "
                "cancel_requested, has_hints)) FROM tasks "
                "WHERE task_id IN (SELECT value FROM json_each(?))",
                (_ids_json(list(tokens)),),
            ).fetchone()[0])
            held = []
            hinted = []  # only tasks with resource hints hold leases (the claim takes them)
            seen = set()
            for task_id, token, status, cancel, has_hints in rows:
                seen.add(task_id)
                if status == "RUNNING" and token == tokens[task_id]:
                    held.append(task_id)
                    if has_hints:
                        hinted.append(task_id)
                    if cancel:
                        result.cancel_requested.append(task_id)
                else:
                    result.lost.append(task_id)
            result.lost.extend(t for t in tokens if t not in seen)
            if held:
                conn.execute(
                    "UPDATE tasks SET claim_expires_at = ? "
                    "WHERE task_id IN (SELECT value FROM json_each(?))",
                    (us(now) + int(claim_ttl * 1e6), _ids_json(held)),
                )
            if hinted:
                self._leases_renew(conn, hinted, now + timedelta(seconds=claim_ttl))
                result.revoked = self._leases_revoked(conn, [(t, tokens[t]) for t in hinted])
        return result

    def task_complete_many(self, completions: Sequence[Completion], now: datetime) -> list[str]:
        if not completions:
            return []
        items = _apply_items(completions)
        with self._write() as conn:
            applied = self._apply(conn, items, now)
        if any(i.resolution.status is TaskStatus.QUEUED for i in items):
            self._wake("creep_tasks", "")
        return applied

    def _apply(self, conn: sqlite3.Connection, items: list[_Apply], now: datetime) -> list[str]:
        """Apply fenced transitions to running tasks; return the ids that still held the claim.

        Two set-based statements over one JSON document (see `_apply_document`): the events
        first, then the update, both fenced by claim token, so no per-row round trips."""
        if not items:
            return []
        for status in {item.resolution.status for item in items}:
            check_transition(TaskStatus.RUNNING, status)
        now_us = us(now)
        plain, doc = _apply_document(items)
        # Which tasks still run under their claim is read first, as one JSON document (see
        # _claim_rows: a row per task would take the GIL back once per task); the events and
        # the update that follow, in the same write transaction, match exactly those tasks.
        rows: list[Any] = []
        if plain:  # the usual completion, a success: constants in the SQL, not per row
            rows = orjson.loads(conn.execute(_SUCCESS_HELD_SQL, (plain,)).fetchone()[0])
            if rows:
                conn.execute(_SUCCESS_EVENTS_SQL, (plain, now_us))
                conn.execute(_SUCCESS_UPDATE_SQL, (plain, now_us))
        stopped: list[str] = []
        if doc:
            general = orjson.loads(conn.execute(_APPLY_HELD_SQL, (doc,)).fetchone()[0])
            if general:
                conn.execute(_APPLY_EVENTS_SQL, (doc, now_us))
                conn.execute(_APPLY_UPDATE_SQL, (doc, now_us))
            stopped = [r[0] for r in general if r[1] == "QUEUED" and r[4]]
            rows += general
        succeeded = [r[0] for r in rows if r[2] and r[1] == "SUCCESS"]
        dead = [r[0] for r in rows if r[2] and r[1] not in ("SUCCESS", "QUEUED")]
        hinted = {r[0] for r in rows if r[3]}
        if hinted:  # tasks that may hold leases: settle them in this transaction
            first = {i.task_id: i for i in reversed(items)}  # as _apply_document: first entry
            self._leases_settle(
                conn,
                [
                    (i.task_id, i.claim_token, i.resolution.status.value,
                     i.resolution.event_type, i.resolution.result_code)
                    for i in first.values() if i.task_id in hinted
                ],
                now,
            )
        if succeeded:
            self._promote_dependants(conn, succeeded, now_us)
        if dead:
            self._cancel_dependants(conn, dead, now_us)
        if stopped:
            self._cancel_requeued(conn, stopped, now_us)
        return [r[0] for r in rows]

    def _cancel_requeued(self, conn: sqlite3.Connection, task_ids: list[str], now_us: int) -> None:
        """Tasks whose attempt ended in a retry (or whose worker was lost) while their
        cancellation was requested: cancelled now, as a queued task is, instead of run again."""
        rows = conn.execute(
            """UPDATE tasks SET status = 'CANCELLED', result_code = 'CANCELLED',
                result_message = ?2, finished_at = ?1, updated_at = ?1, cancel_requested = 0,
                task_version = task_version + 1
            WHERE status = 'QUEUED' AND cancel_requested = 1
              AND task_id IN (SELECT value FROM json_each(?3))
            RETURNING task_id, tenant_id, attempt""",
            (now_us, CANCELLED_WHILE_ENDING, _ids_json(task_ids)),
        ).fetchall()
        payload = dumps({"reason": CANCELLED_WHILE_ENDING})
        _insert_events(conn, [(r[0], r[1], "cancelled", "QUEUED", "CANCELLED", r[2], payload,
                               now_us) for r in rows])
        if rows:
            self._cancel_dependants(conn, [r[0] for r in rows], now_us)

    def _promote_dependants(self, conn: sqlite3.Connection, parents: list[str], now_us: int) -> int:
        rows = conn.execute(
            """UPDATE tasks SET status = 'QUEUED', queued_at = ?1, updated_at = ?1,
                task_version = task_version + 1
            WHERE status = 'PENDING' AND run_after <= ?1
              AND task_id IN (SELECT task_id FROM task_dependencies
                              WHERE depends_on_id IN (SELECT value FROM json_each(?2)))
              AND NOT EXISTS (SELECT 1 FROM task_dependencies d JOIN tasks p
                              ON p.task_id = d.depends_on_id
                              WHERE d.task_id = tasks.task_id AND p.status <> 'SUCCESS')
            RETURNING task_id, tenant_id, attempt""",
            (now_us, _ids_json(parents)),
        ).fetchall()
        _insert_events(
            conn, [(r[0], r[1], "queued", "PENDING", "QUEUED", r[2], b"{}", now_us) for r in rows]
        )
        return len(rows)

    def _cancel_dependants(self, conn: sqlite3.Connection, parents: list[str], now_us: int) -> None:
        frontier = parents
        while frontier:
            rows = conn.execute(
                # Each names the dependency in `frontier` that cancels it (the task that
                # ended, or the one cancelled before it in the cascade) and how it ended.
                """UPDATE tasks SET status = 'CANCELLED', result_code = 'DEPENDENCY_FAILED',
                    result_message = (
                        SELECT 'dependency ' || d.depends_on_id || ' ended ' || p.status
                        FROM task_dependencies d JOIN tasks p ON p.task_id = d.depends_on_id
                        WHERE d.task_id = tasks.task_id
                          AND d.depends_on_id IN (SELECT value FROM json_each(?2))
                        ORDER BY d.depends_on_id LIMIT 1),
                    finished_at = ?1, updated_at = ?1, task_version = task_version + 1
                WHERE status IN ('PENDING', 'QUEUED')
                  AND task_id IN (SELECT task_id FROM task_dependencies
                                  WHERE depends_on_id IN (SELECT value FROM json_each(?2)))
                RETURNING task_id, tenant_id, attempt, has_dependants, result_message""",
                (now_us, _ids_json(frontier)),
            ).fetchall()
            _insert_events(
                conn,
                [(r[0], r[1], "cancelled", "PENDING", "CANCELLED", r[2],
                  dumps({"result_code": "DEPENDENCY_FAILED", "message": r[4]}), now_us)
                 for r in rows],
            )
            frontier = [r[0] for r in rows if r[3]]

    def task_progress(
        self, task_id: str, claim_token: str, progress: int, message: str | None, now: datetime
    ) -> bool:
        now_us = us(now)
        with self._write() as conn:
            # A progress identical to the one this claim recorded last (its row was updated
            # since the claim) is a resend after a lost answer: nothing more is written.
            row = conn.execute(
                """UPDATE tasks SET progress = ?1, progress_message = ?2, updated_at = ?3,
                    task_version = task_version + 1
                WHERE task_id = ?4 AND claim_token = ?5 AND status = 'RUNNING'
                  AND NOT (progress = ?1 AND progress_message IS ?2
                           AND updated_at > started_at)
                RETURNING tenant_id, attempt""",
                (progress, message, now_us, task_id, claim_token),
            ).fetchone()
            if row is None:
                return conn.execute(
                    "SELECT 1 FROM tasks WHERE task_id = ? AND claim_token = ? "
                    "AND status = 'RUNNING'", (task_id, claim_token),
                ).fetchone() is not None
            _insert_events(
                conn,
                [(task_id, row[0], "progress", "RUNNING", "RUNNING", row[1],
                  dumps({"progress": progress, "message": message}), now_us)],
            )
        return True

    def task_cancel(
        self, task_id: str, now: datetime, *, tenant_id: str | None = None,
        reason: str | None = None,
    ) -> TaskOrder:
        now_us = us(now)
        with self._write() as conn:
            task = self._get_for_update(conn, task_id, tenant_id)
            if task.deleted_at is not None:
                raise TaskDeleted(task_id, "cancelled")
            if task.status is TaskStatus.RUNNING:
                if task.cancel_requested:
                    raise ConflictError(f"task {task_id}: cancellation is already requested")
                conn.execute(
                    "UPDATE tasks SET cancel_requested = 1, updated_at = ?, "
                    "task_version = task_version + 1 WHERE task_id = ?",
                    (now_us, task_id),
                )
                _insert_events(
                    conn,
                    [(task_id, task.tenant_id, "cancel_requested", "RUNNING", "RUNNING",
                      task.attempt, dumps({"reason": reason} if reason else {}), now_us)],
                )
                wake = ("creep_cancel", task_id)
            else:
                check_transition(task.status, TaskStatus.CANCELLED)
                conn.execute(
                    "UPDATE tasks SET status = 'CANCELLED', result_code = 'CANCELLED', "
                    "result_message = ?, finished_at = ?, updated_at = ?, "
                    "task_version = task_version + 1 WHERE task_id = ?",
                    (reason or "cancelled", now_us, now_us, task_id),
                )
                _insert_events(
                    conn,
                    [(task_id, task.tenant_id, "cancelled", task.status.value, "CANCELLED",
                      task.attempt, dumps({"reason": reason} if reason else {}), now_us)],
                )
                self._cancel_dependants(conn, [task_id], now_us)
                wake = None
            updated = self._get_for_update(conn, task_id, None)
        if wake:
            self._wake(*wake)
        return updated

    def task_retry(
        self, task_id: str, now: datetime, *, tenant_id: str | None = None
    ) -> TaskOrder:
        now_us = us(now)
        with self._write() as conn:
            task = self._get_for_update(conn, task_id, tenant_id)
            if task.deleted_at is not None:
                raise TaskDeleted(task_id, "retried")
            if task.status not in RETRYABLE_FROM:
                raise IllegalTransition("task", task.status.value, TaskStatus.QUEUED.value)
            if task.batch_id is not None:
                refuse_purging_batch(task_id, task.batch_id, conn.execute(
                    BATCH_PURGING, (task.batch_id,)).fetchone())
            if task.depends_on:
                # By the ids the task's row names: retention deletes a finished dependency
                # and its task_dependencies rows with it.
                check_retry_dependencies(task, dict(conn.execute(
                    "SELECT task_id, status FROM tasks "
                    "WHERE task_id IN (SELECT value FROM json_each(?))",
                    (_ids_json(task.depends_on),),
                ).fetchall()))
            retries = retries_allowed(task.constraints)
            conn.execute(
                """UPDATE tasks SET status = 'QUEUED', queued_at = ?1, run_after = ?1,
                    finished_at = NULL, result_code = NULL, result_message = NULL,
                    max_attempts = attempt + ?2, updated_at = ?1, task_version = task_version + 1
                WHERE task_id = ?3""",
                (now_us, retries + 1, task_id),
            )
            _insert_events(
                conn,
                [(task_id, task.tenant_id, "queued", task.status.value, "QUEUED", task.attempt,
                  dumps({"manual_retry": True}), now_us)],
            )
            updated = self._get_for_update(conn, task_id, None)
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
        now_us = us(now)
        with self._write() as conn:
            task = self._get_for_update(conn, task_id, tenant_id)
            if task.task_version != expected_version:
                raise VersionConflict("task", task_id, expected_version, task.task_version)
            if task.deleted_at is not None:
                raise TaskDeleted(task_id, "changed")
            if not changes:
                return task
            sets: list[str] = []
            params: list[Any] = []
            for name, value in changes.items():
                sets.append(f"{name} = ?")
                if name == "tags":
                    params.append(dumps(value))
                elif name in ("max_total_cost", "business_value_hint"):
                    params.append(None if value is None else str(value))
                else:
                    params.append(value)
            row = conn.execute(
                f"UPDATE tasks SET {', '.join(sets)}, updated_at = ?, "
                "task_version = task_version + 1 WHERE task_id = ? AND task_version = ? "
                "RETURNING task_version",
                (*params, now_us, task_id, expected_version),
            ).fetchone()
            if row is None:
                raise VersionConflict("task", task_id, expected_version, None)
            _insert_events(
                conn,
                [(task_id, task.tenant_id, "updated", task.status.value, task.status.value,
                  task.attempt, dumps({"changes": changes}), now_us)],
            )
            return self._get_for_update(conn, task_id, None)

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
        now_us = us(now)
        try:
            with self._write() as conn:
                task = self._get_for_update(conn, task_id, tenant_id)
                check_soft_delete(task, delete, expected_version)
                conn.execute(
                    "UPDATE tasks SET deleted_at = ?1, updated_at = ?2, "
                    "task_version = task_version + 1 WHERE task_id = ?3",
                    (now_us if delete else None, now_us, task_id),
                )
                _insert_events(conn, [(task_id, task.tenant_id,
                                       "deleted" if delete else "restored", task.status.value,
                                       task.status.value, task.attempt, b"{}", now_us)])
                return self._get_for_update(conn, task_id, None)
        except Unchanged as same:  # rolled back: nothing written
            return same.task

    def _get_for_update(
        self, conn: sqlite3.Connection, task_id: str, tenant_id: str | None
    ) -> TaskOrder:
        row = conn.execute(
            f"SELECT {TASK_SELECT} FROM tasks WHERE task_id = ?", (task_id,)
        ).fetchone()
        if row is None or (tenant_id is not None and row[_IDX["tenant_id"]] != tenant_id):
            raise NotFound("task", task_id)
        return _row_to_task(row)

    # -- events --------------------------------------------------------------------------------

    def task_events(self, task_id: str, tenant_id: str | None = None) -> list[TaskEvent]:
        self.task_get(task_id, tenant_id)
        rows = self._conn().execute(
            "SELECT event_id, task_id, tenant_id, event_type, from_status, to_status, attempt, "
            f"payload, created_at FROM task_events WHERE {SQLITE_EVENTS_OF} task_id = ? "
            "ORDER BY event_id",
            (task_id,),
        ).fetchall()
        return [_row_to_event(r) for r in rows]

    def task_events_after(
        self, cursor: str | None, *, limit: int = 500, task_id: str | None = None,
        tenant_id: str | None = None,
    ) -> list[TaskEvent]:
        where = ["event_id > ?"]
        params: list[Any] = [_parse_cursor(cursor)]
        if task_id is not None:
            where.append(f"{SQLITE_EVENTS_OF} task_id = ?")
            params.append(task_id)
        if tenant_id is not None:
            where.append("tenant_id = ?")
            params.append(tenant_id)
        params.append(limit)
        rows = self._conn().execute(
            "SELECT event_id, task_id, tenant_id, event_type, from_status, to_status, attempt, "
            f"payload, created_at FROM task_events WHERE {' AND '.join(where)} "
            "ORDER BY event_id LIMIT ?",
            params,
        ).fetchall()
        return [_row_to_event(r) for r in rows]

    def task_has_events_after(
        self, cursor: str | None, *, task_id: str, tenant_id: str | None = None
    ) -> bool:
        """Whether the task has an event after `cursor` (SQLite has no horizon: exactly
        when task_events_after would return one)."""
        where = f"{SQLITE_EVENTS_OF} task_id = ? AND event_id > ?"
        params: list[Any] = [task_id, _parse_cursor(cursor)]
        if tenant_id is not None:
            where += " AND tenant_id = ?"
            params.append(tenant_id)
        row = self._conn().execute(
            f"SELECT EXISTS (SELECT 1 FROM task_events WHERE {where})", params
        ).fetchone()
        return bool(row and row[0])

    # -- maintenance ---------------------------------------------------------------------------

    def task_maintain(
        self, now: datetime, backoff: Backoff, timeout_grace: float
    ) -> MaintenanceReport:
        report = MaintenanceReport()
        now_us = us(now)
        with self._write() as conn:
            rows = conn.execute(
                """UPDATE tasks SET status = 'QUEUED', queued_at = ?1, updated_at = ?1,
                    task_version = task_version + 1
                WHERE task_id IN (
                    SELECT task_id FROM tasks WHERE status = 'PENDING' AND run_after <= ?1
                      AND NOT EXISTS (SELECT 1 FROM task_dependencies d JOIN tasks p
                                      ON p.task_id = d.depends_on_id
                                      WHERE d.task_id = tasks.task_id AND p.status <> 'SUCCESS')
                    LIMIT 5000)
                RETURNING task_id, tenant_id, attempt""",
                (now_us,),
            ).fetchall()
            _insert_events(
                conn,
                [(r[0], r[1], "queued", "PENDING", "QUEUED", r[2], b"{}", now_us) for r in rows],
            )
            report.promoted = len(rows)
            # A task's own constraints.timeout_grace_ms (schedules) extends the grace.
            stuck = conn.execute(
                f"""SELECT task_id, claim_token, attempt, max_attempts, deadline_at,
                    claim_expires_at, {_GRACE_MS} FROM tasks
                WHERE status = 'RUNNING' AND (claim_expires_at < ?1 OR (deadline_at < ?2
                    AND deadline_at < ?1 - COALESCE({_GRACE_MS}, 0) * 1000))
                LIMIT 5000""",
                (now_us, now_us - int(timeout_grace * 1e6)),
            ).fetchall()
            items = []
            for task_id, token, attempt, max_attempts, deadline, expires, grace_ms in stuck:
                outcome, res = rescue(
                    task_id, token, attempt, max_attempts,
                    from_us(deadline), from_us(expires), now, backoff, grace_ms,
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
            self._wake("creep_tasks", "")
        return report

    # -- queue speed: a completion batch and the next claim in one transaction -----------------

    def task_complete_and_claim(
        self, completions: Sequence[Completion], worker_id: str, task_types: Sequence[str],
        limit: int, now: datetime, claim_ttl: float,
    ) -> tuple[list[str], list[ClaimedTask]]:
        """task_complete_many then task_claim, committed together: a worker that has results
        to write and room for more work pays one commit (and writes each page once) instead
        of two. Returns (applied task ids, claimed tasks)."""
        items = _apply_items(completions)
        rows: list[Any] = []
        token = ""
        with self._write() as conn, self._leases_batched(conn):
            applied = self._apply(conn, items, now) if items else []
            if limit > 0 and task_types:
                rows, token = self._claim_rows(conn, worker_id, task_types, limit, now, claim_ttl)
        if any(i.resolution.status is TaskStatus.QUEUED for i in items):
            self._wake("creep_tasks", "")
        return applied, _claimed(rows, token)

    # -- locks ---------------------------------------------------------------------------------

    def lock_acquire(
        self, lock_key: str, holder_id: str, ttl: float, now: datetime, purpose: str = ""
    ) -> str | None:
        ttl_us = int(check_lock_ttl(ttl, "ttl") * 1e6)
        now_us = us(now)
        token = str(uuid.uuid4())
        with self._write() as conn:
            row = conn.execute(
                "SELECT holder_id, token, state, expires_at FROM task_locks WHERE lock_key = ?",
                (lock_key,),
            ).fetchone()
            if row is not None and row[2] == "active" and row[3] >= now_us:
                return None
            conn.execute(
                """INSERT INTO task_locks (lock_key, holder_id, token, state, acquired_at,
                    expires_at, released_at, purpose, created_at, updated_at)
                VALUES (?1, ?2, ?3, 'active', ?4, ?5, NULL, ?6, ?4, ?4)
                ON CONFLICT (lock_key) DO UPDATE SET holder_id = ?2, token = ?3,
                    state = 'active', acquired_at = ?4, expires_at = ?5, released_at = NULL,
                    purpose = ?6, updated_at = ?4""",
                (lock_key, holder_id, token, now_us, now_us + ttl_us, purpose),
            )
        return token

    def lock_renew(
        self, lock_key: str, holder_id: str, token: str, ttl: float, now: datetime
    ) -> bool:
        now_us = us(now)
        expires_us = now_us + int(check_lock_ttl(ttl, "ttl") * 1e6)
        with self._write() as conn:
            # A clock gone back past acquired_at - ttl renews nothing (expires_at must stay
            # after acquired_at): the holder has lost the lock, and takes it again later.
            cur = conn.execute(
                "UPDATE task_locks SET expires_at = ?1, updated_at = ?2 WHERE lock_key = ?3 "
                "AND token = ?4 AND holder_id = ?5 AND state = 'active' AND expires_at >= ?2 "
                "AND acquired_at < ?1",
                (expires_us, now_us, lock_key, token, holder_id),
            )
            return cur.rowcount == 1

    def lock_release(self, lock_key: str, token: str, now: datetime) -> bool:
        now_us = us(now)
        with self._write() as conn:
            # Seed 003: released_at >= acquired_at, also from a holder whose clock went back.
            cur = conn.execute(
                "UPDATE task_locks SET state = 'released', released_at = MAX(?, acquired_at), "
                "updated_at = ? WHERE lock_key = ? AND token = ? AND state = 'active'",
                (now_us, now_us, lock_key, token),
            )
            return cur.rowcount == 1

    # -- wake-ups ------------------------------------------------------------------------------

    def listener(self) -> Listener | None:
        return _DataVersionListener(self.path)

    def notify(self, channel: str, payload: str) -> None:
        self._wake(channel, payload)

    def subscribe(self, callback: Callable[[str, str], None]) -> None:
        """In-process wake-ups: called after this process commits work a worker may want."""
        self._listeners.append(callback)

    def unsubscribe(self, callback: Callable[[str, str], None]) -> None:
        if callback in self._listeners:
            self._listeners.remove(callback)

    def _wake(self, channel: str, payload: str) -> None:
        for callback in list(self._listeners):
            callback(channel, payload)


class _DataVersionListener:
    """Cross-process wake-ups on SQLite: `PRAGMA data_version` moves when another
    connection commits. Polling it is a read of shared memory, so it can run every few ms."""

    def __init__(self, path: str, interval: float = 0.01) -> None:
        self.path = path
        self.interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, on_wake: Callable[[str, str], None]) -> None:
        def run() -> None:
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            try:
                last = conn.execute("PRAGMA data_version").fetchone()[0]
                while not self._stop.wait(self.interval):
                    current = conn.execute("PRAGMA data_version").fetchone()[0]
                    if current != last:
                        last = current
                        on_wake("creep_tasks", "")
            finally:
                conn.close()

        self._thread = threading.Thread(target=run, name="creep-sqlite-listener", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)


#: A plain claim's compact row: these fields, then the claimed row as one JSON array.
_COMPACT = ("task_id", "task_type", "attempt", "max_attempts", "priority", "created_at",
            "deadline_at", "tenant_id")
#: json_array() refuses BLOBs; the JSON columns may hold either (bound as bytes or text).
_ROW_JSON = "json_array({})".format(", ".join(
    f"CAST({c} AS TEXT)" if c in _JSON_COLUMNS else c for c in TASK_COLUMNS))
_CLAIM_PICK_SQL = """SELECT json_group_array(rowid) FROM (
    SELECT rowid FROM tasks
    WHERE status = 'QUEUED' AND has_hints = false AND run_after <= ?1
      AND task_type IN (SELECT value FROM json_each(?2))
      AND (?4 IS NULL OR tenant_id = ?4)
    ORDER BY priority DESC, created_at LIMIT ?3)"""
_CLAIM_SQL = """UPDATE tasks SET status = 'RUNNING', attempt = attempt + 1, started_at = ?1,
    updated_at = ?1, claimed_by = ?2, claim_token = ?3, claim_expires_at = ?4,
    deadline_at = ?1 + timeout_ms * 1000, task_version = task_version + 1,
    cancel_requested = 0, progress_message = NULL
WHERE rowid IN (SELECT value FROM json_each(?5))"""
_CLAIM_EVENTS_SQL = """
INSERT INTO task_events (task_id, tenant_id, event_type, from_status, to_status, attempt,
    payload, created_at, task_priority)
SELECT task_id, tenant_id, 'started', 'QUEUED', 'RUNNING', attempt, ?2, ?3, priority
FROM tasks WHERE rowid IN (SELECT value FROM json_each(?1))"""
#: The claimed rows as one JSON array of compact rows (the row itself nested as an array).
_CLAIM_ROWS_SQL = f"""SELECT json_group_array(json_array({", ".join(_COMPACT)}, {_ROW_JSON}))
FROM tasks WHERE rowid IN (SELECT value FROM json_each(?1))"""


_GRACE_MS = "json_extract(CAST(constraints AS TEXT), '$.timeout_grace_ms')"


_INSERT_PRIORITY_I = INSERT_COLUMNS.index("priority")


def _by_priority_desc(row: tuple[Any, ...]) -> int:
    return -int(row[_INSERT_PRIORITY_I])


_PLAIN_PRIORITY_I = PLAIN_COLUMNS.index("priority")


def _plain_priority_desc(row: tuple[Any, ...]) -> int:
    return -int(row[_PLAIN_PRIORITY_I])


_PLAIN_INSERT = f"INSERT INTO tasks ({', '.join(PLAIN_COLUMNS)})"
_PLAIN_IDX = tuple(INSERT_COLUMNS.index(c) for c in PLAIN_COLUMNS)
_OPTIONAL = tuple((INSERT_COLUMNS.index(c), d) for c, d in OPTIONAL_DEFAULTS.items())
_ONE_STATEMENT = rows_per_statement(len(INSERT_COLUMNS))
_TWO_EVENTS = (TaskStatus.QUEUED, TaskStatus.CANCELLED)
# What creation_events() describes, built by SQLite from the new rows (rowid > ?1). Each
# event's id is given (the k-th new row's events: ?3 + 2k - 1 and ?3 + 2k, ?3 being the
# largest id used so far, _LAST_EVENT_ID; a task with one event leaves its second id unused),
# so their order needs no ORDER BY, whose sort of every event cost ~1.7 us/task; CROSS JOIN
# keeps the tasks the outer loop, so the ids arrive ascending and the table is appended to.
# (Reading task_events inside this statement would make SQLite buffer every row first.)
_LAST_EVENT_ID = """SELECT max(
    coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'task_events'), 0),
    coalesce((SELECT max(event_id) FROM task_events), 0))"""
_CREATION_EVENTS_SQL = """
INSERT INTO task_events (event_id, task_id, tenant_id, event_type, from_status, to_status,
    attempt, payload, created_at)
WITH e(ord, etype, old, new, payload) AS (VALUES
    (1, 'created', NULL, 'PENDING', NULL),
    (2, 'queued', 'PENDING', 'QUEUED', '{}'),
    (3, 'cancelled', 'PENDING', 'CANCELLED', NULL))
SELECT ?3 + 2 * (t.rowid - ?1) - (e.ord = 1), t.task_id, t.tenant_id, e.etype, e.old, e.new,
    0, CASE e.ord
        WHEN 1 THEN json_object('task_type', t.task_type, 'priority', t.priority)
        WHEN 3 THEN json_object('result_code', 'DEPENDENCY_FAILED', 'message', t.result_message)
        ELSE e.payload END, ?2
FROM tasks t CROSS JOIN e ON e.ord = 1 OR (e.ord = 2 AND t.status = 'QUEUED')
    OR (e.ord = 3 AND t.status = 'CANCELLED')
WHERE t.rowid > ?1"""


@dataclass(slots=True)
class PreparedPlain:
    """task_prepare_many's answer: plain specs' new tasks and the parameters of the statements
    inserting their rows (sorted for claims, as _insert_new lays them out)."""

    specs: Sequence[TaskSpec]
    now: datetime
    tasks: dict[str, TaskOrder]
    statements: list[list[Any]]


def _plain_row(t: TaskOrder, spec: TaskSpec, now_us: int) -> tuple[Any, ...]:
    """PLAIN_COLUMNS of a new task whose spec is_plain()."""
    return (
        t.task_id, t.idempotency_key, spec.request_hash, t.tenant_id, t.env, t.task_type,
        t.priority, t.timeout_ms, t.currency, t.status.value, now_us,
        now_us if t.queued_at is not None else None, now_us, spec.input_payload_json,
        t.correlation_id, t.max_attempts, now_us if spec.run_after is None else us(t.run_after),
    )


def _task_row(t: TaskOrder, spec: TaskSpec, has_dependants: bool) -> tuple[Any, ...]:
    return (
        t.task_id, t.idempotency_key, t.tenant_id, t.project_id, t.env, t.external_ref,
        t.task_type, t.task_category, t.description, t.priority, t.timeout_ms,
        None if t.max_total_cost is None else str(t.max_total_cost), t.currency,
        None if t.business_value_hint is None else str(t.business_value_hint),
        t.status.value, us(t.created_at), us(t.queued_at) if t.queued_at else None, None,
        us(t.finished_at) if t.finished_at else None, us(t.updated_at), t.result_code,
        t.result_message, t.task_version, b"[]", dumps(t.resource_hints),
        dumps(t.constraints), t.tenant_policies_version, dumps(t.tags), t.batch_id, 0, None,
        spec.input_payload_json, None, t.channel, t.correlation_id, dumps(t.depends_on), 0,
        t.max_attempts, us(t.run_after), spec.request_hash, int(has_dependants),
    )


def _result_json(outcome: Outcome) -> bytes | None:
    if outcome.kind is not OutcomeKind.SUCCEEDED:
        return None
    return outcome.result_json if outcome.result_json is not None else dumps(outcome.result)


def _apply_items(completions: Sequence[Completion]) -> list[_Apply]:
    return [
        _Apply(c.outcome.task_id, c.outcome.claim_token, c.resolution, _result_json(c.outcome),
               c.outcome.error)
        for c in completions
    ]


def _claimed_task(row: Sequence[Any]) -> TaskOrder:
    # A compact row: the row last, as a JSON array (hinted claims) or already decoded (plain).
    last = row[-1]
    return _row_to_task(orjson.loads(last) if isinstance(last, str | bytes) else last)


def _claimed(rows: list[Any], token: str) -> list[ClaimedTask]:
    """Claimed rows as ClaimedTasks in claim order: compact rows (_COMPACT and the row as
    JSON) of plain and hinted claims. The TaskOrder of each is decoded on first use (most
    handlers of a big batch read a few fields, and a worker needs only the id, type and
    attempt counters)."""
    lazy = ClaimedTask.lazy
    out: list[tuple[int, int, ClaimedTask]] = []
    for r in rows:
        task_id, task_type, attempt, max_attempts, priority, created, deadline = r[:7]
        out.append((-priority, created, lazy(
            r, _claimed_task, token, _EPOCH + timedelta(microseconds=deadline), task_id,
            task_type, attempt, max_attempts)))
    out.sort(key=itemgetter(0, 1))
    return [c for _, _, c in out]


def _apply_document(items: Sequence[_Apply]) -> tuple[str | None, str | None]:
    """JSON arrays of per-task rows for the set-based completion statements: plain successes
    (task id, claim token, result) and everything else (all fields, see below). A task
    listed twice is applied once (its first entry)."""
    seen: set[str] = set()
    plain: list[list[Any]] = []
    rows: list[list[Any]] = []
    success = TaskStatus.SUCCESS
    for i in items:
        if i.task_id in seen:
            continue
        seen.add(i.task_id)
        res = i.resolution
        if (res.status is success and res.result_code == "OK" and not res.result_message
                and i.error is None and res.run_after is None and res.charge_attempt
                and res.event_type == "succeeded"):
            plain.append([i.task_id, i.claim_token,
                          None if i.result_json is None else i.result_json.decode()])
            continue
        rows.append([
            i.task_id, i.claim_token, res.status.value, res.result_code, res.result_message,
            None if i.result_json is None else i.result_json.decode(), i.error,
            us(res.run_after) if res.run_after else None, 1 if res.charge_attempt else 0,
            res.event_type, dumps(resolution_payload(res, i.error)).decode(),
        ])
    return (orjson.dumps(plain).decode() if plain else None,
            orjson.dumps(rows).decode() if rows else None)


# Fields of one `_apply_document` row, by position: 0 task_id, 1 claim_token, 2 status,
# 3 result_code, 4 result_message, 5 result json, 6 error, 7 run_after, 8 charge attempt,
# 9 event_type, 10 event payload. Both statements match a task only while it still runs
# under that claim token; the events go first so they carry the attempt being finished.
# Events of claims and completions carry the task's priority (migration 0009).
_APPLY_EVENTS_SQL = """
INSERT INTO task_events (task_id, tenant_id, event_type, from_status, to_status, attempt,
    payload, created_at, task_priority)
SELECT t.task_id, t.tenant_id, o.value ->> 9, 'RUNNING', o.value ->> 2, t.attempt,
    o.value ->> 10, ?2, t.priority
FROM json_each(?1) o JOIN tasks t ON t.task_id = o.value ->> 0
WHERE t.claim_token = o.value ->> 1 AND t.status = 'RUNNING'"""
# A plain success (`_apply_document`'s first array: 0 task_id, 1 claim_token, 2 result json):
# what the statements above do for status SUCCESS, result code OK, no message, no error.
_SUCCESS_EVENTS_SQL = """
INSERT INTO task_events (task_id, tenant_id, event_type, from_status, to_status, attempt,
    payload, created_at, task_priority)
SELECT t.task_id, t.tenant_id, 'succeeded', 'RUNNING', 'SUCCESS', t.attempt,
    '{"result_code":"OK"}', ?2, t.priority
FROM json_each(?1) o JOIN tasks t ON t.task_id = o.value ->> 0
WHERE t.claim_token = o.value ->> 1 AND t.status = 'RUNNING'"""
_SUCCESS_UPDATE_SQL = """
UPDATE tasks SET status = 'SUCCESS', result_code = 'OK', result_message = NULL,
    result_payload = COALESCE(o.value ->> 2, result_payload), finished_at = ?2,
    progress = 100, claimed_by = NULL, claim_token = NULL, claim_expires_at = NULL,
    deadline_at = NULL, cancel_requested = 0, task_version = task_version + 1, updated_at = ?2
FROM json_each(?1) o
WHERE tasks.task_id = o.value ->> 0 AND tasks.claim_token = o.value ->> 1
  AND tasks.status = 'RUNNING'"""
_APPLY_UPDATE_SQL = """
UPDATE tasks SET status = o.value ->> 2, result_code = o.value ->> 3,
    result_message = o.value ->> 4,
    result_payload = COALESCE(o.value ->> 5, result_payload),
    last_error = COALESCE(o.value ->> 6, last_error),
    finished_at = CASE WHEN o.value ->> 2 = 'QUEUED' THEN NULL ELSE ?2 END,
    run_after = COALESCE(o.value ->> 7, run_after),
    queued_at = CASE WHEN o.value ->> 2 = 'QUEUED' THEN ?2 ELSE queued_at END,
    attempt = CASE WHEN o.value ->> 8 THEN attempt ELSE attempt - 1 END,
    progress = CASE WHEN o.value ->> 2 = 'SUCCESS' THEN 100 ELSE progress END,
    claimed_by = NULL, claim_token = NULL, claim_expires_at = NULL, deadline_at = NULL,
    cancel_requested = CASE WHEN o.value ->> 2 = 'QUEUED' THEN cancel_requested ELSE 0 END,
    task_version = task_version + 1, updated_at = ?2
FROM json_each(?1) o
WHERE tasks.task_id = o.value ->> 0 AND tasks.claim_token = o.value ->> 1
  AND tasks.status = 'RUNNING'"""
# The tasks the statements above will change, as `[task_id, new status, has_dependants,
# has_hints, cancel_requested after the update]` rows of one JSON array: a task matches
# only while it runs under that claim token, and a document lists a task once.
_SUCCESS_HELD_SQL = """
SELECT json_group_array(json_array(t.task_id, 'SUCCESS', t.has_dependants, t.has_hints, 0))
FROM json_each(?1) o JOIN tasks t ON t.task_id = o.value ->> 0
WHERE t.claim_token = o.value ->> 1 AND t.status = 'RUNNING'"""
_APPLY_HELD_SQL = """
SELECT json_group_array(json_array(t.task_id, o.value ->> 2, t.has_dependants, t.has_hints,
    CASE WHEN o.value ->> 2 = 'QUEUED' THEN t.cancel_requested ELSE 0 END))
FROM json_each(?1) o JOIN tasks t ON t.task_id = o.value ->> 0
WHERE t.claim_token = o.value ->> 1 AND t.status = 'RUNNING'"""


def _insert_events(conn: sqlite3.Connection, rows: list[tuple[Any, ...]]) -> None:
    if rows:
        insert_rows(
            conn, "INSERT INTO task_events (task_id, tenant_id, event_type, from_status, "
            "to_status, attempt, payload, created_at)", 8, rows,
        )


def _row_to_event(r: Sequence[Any]) -> TaskEvent:
    return TaskEvent(
        event_id=r[0], cursor=str(r[0]), task_id=r[1], tenant_id=r[2], event_type=r[3],
        from_status=r[4], to_status=r[5], attempt=r[6], payload=orjson.loads(r[7]),
        created_at=_EPOCH + timedelta(microseconds=r[8]),
    )


def _parse_cursor(cursor: str | None) -> int:
    if not cursor:
        return 0
    try:
        return int(cursor.rsplit(".", 1)[-1])
    except ValueError:
        raise ValidationError.single("cursor", "is not a cursor this store issued") from None


def _split_sql(script: str) -> list[str]:
    """Split a migration into statements; trigger bodies (BEGIN ... END;) stay whole."""
    statements: list[str] = []
    current: list[str] = []
    for line in script.splitlines():
        if line.strip().startswith("--") and not current:
            continue
        current.append(line)
        text = "\n".join(current).strip()
        if text.endswith(";") and sqlite3.complete_statement(text):
            statements.append(text)
            current = []
    if "\n".join(current).strip():
        statements.append("\n".join(current))
    return statements

