"""The Python API: register handlers, submit task orders, run workers."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any, BinaryIO, TypeVar

from creep.app_schedules import SchedulesApi  # schedules
from creep.asset_api import AssetApi
from creep.bulk_submit import write_chunks
from creep.domain.artifacts import Artifact
from creep.domain.bulk_specs import build_specs, check_orders
from creep.domain.clock import Clock, SystemClock
from creep.domain.errors import ValidationError, check_member, one_order_errors
from creep.domain.events import TaskEvent
from creep.domain.ids import canonical_uuid
from creep.domain.outcomes import Backoff
from creep.domain.task import TaskOrder, TaskStatus
from creep.domain.task_spec import Limits, TaskSpec, validate_task_spec
from creep.engine.artifact_reconcile import ReconcileReport, reconcile
from creep.engine.artifacts import ArtifactService, max_artifact_bytes
from creep.engine.artifacts import artifact_dir as artifact_dir_setting
from creep.engine.run_loop import run_to_end
from creep.engine.worker import Handler, Worker, WorkerSettings
from creep.gc_tuning import fewer_collections
from creep.ports import MaintenanceReport, Store, TaskFilter
from creep.storage import database_url, open_store, require_current_schema
from creep.storage.blob_store import BlobStore
from creep.tracing import tracer

H = TypeVar("H", bound=Handler)

#: Largest submission written in one transaction; bigger ones are split.
SUBMIT_CHUNK = 5000
#: The garbage collector's first-generation threshold during a bulk submission (gc_tuning).
SUBMIT_GC_THRESHOLD = 100_000


def auto_migrate_setting(explicit: bool | None) -> bool:
    """An explicit choice, else CREEP_AUTO_MIGRATE (as `creep server` reads it), else True."""
    if explicit is not None:
        return explicit
    raw = (os.environ.get("CREEP_AUTO_MIGRATE") or "true").strip().lower()
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise ValidationError.single("CREEP_AUTO_MIGRATE", f"must be true or false (got {raw!r})")


class Creep(SchedulesApi, AssetApi):  # schedules, assets: see the mixins
    """One creep application: a database, the handlers this process knows, and its settings.

    >>> app = Creep("sqlite:///./creep.db")
    >>> @app.handler("ECHO")
    ... async def echo(ctx):
    ...     return {"echo": ctx.task.input_payload}
    """

    def __init__(
        self,
        database_url_: str | None = None,
        *,
        clock: Clock | None = None,
        limits: Limits | None = None,
        backoff: Backoff | None = None,
        auto_migrate: bool | None = None,
        store: Store | None = None,
        artifact_dir: str | os.PathLike[str] | None = None,
        artifact_max_bytes: int | None = None,
    ) -> None:
        self.database_url = database_url(database_url_)
        self.clock = clock or SystemClock()
        self.limits = limits or Limits()
        self.backoff = backoff or Backoff()
        self.handlers: dict[str, Handler] = {}
        self._store = store
        self._auto_migrate = auto_migrate
        self._store_lock = threading.Lock()
        # Artifacts: content directory (CREEP_ARTIFACT_DIR) and upload limit.
        self.artifact_dir = artifact_dir_setting(artifact_dir)
        self.artifact_max_bytes = max_artifact_bytes(artifact_max_bytes)

    @property
    def store(self) -> Store:
        store = self._store
        if store is None:
            with self._store_lock:  # many threads may make their first call at once
                if self._store is None:
                    migrate = auto_migrate_setting(self._auto_migrate)
                    opened = open_store(self.database_url, migrate=migrate)
                    if not migrate:
                        try:
                            require_current_schema(opened)
                        except BaseException:
                            opened.close()
                            raise
                    self._store = opened
                store = self._store
        return store

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None

    def __enter__(self) -> Creep:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- handlers ------------------------------------------------------------------------------

    def handler(self, task_type: str) -> Callable[[H], H]:
        """Register a sync or async function as the handler of `task_type`."""
        if not isinstance(task_type, str) or not task_type:
            raise ValidationError.single("task_type", "must be a non-empty string")

        def register(fn: H) -> H:
            if task_type in self.handlers:
                raise ValidationError.single(
                    "task_type", f"{task_type!r} already has a handler"
                )
            self.handlers[task_type] = fn
            return fn

        return register

    # -- submitting ----------------------------------------------------------------------------

    def validate(self, fields: Mapping[str, Any], prefix: str = "") -> TaskSpec:
        return validate_task_spec(fields, now=self.clock.now(), limits=self.limits, prefix=prefix)

    def submit(self, **fields: Any) -> TaskOrder:
        """Create one task order. A repeat of the same (tenant_id, env, idempotency_key) and body
        returns the existing task with `replayed=True`; a different body raises
        IdempotencyConflict."""
        spec = self.validate(fields)
        try:
            return self.store.task_create_many([spec], self.clock.now())[0]
        except ValidationError as exc:
            raise one_order_errors(exc) from None

    def submit_many(self, orders: Iterable[Mapping[str, Any]]) -> list[TaskOrder]:
        """Create many task orders in as few transactions as possible. Tasks may depend on
        each other by `task_id`; a cycle or an unknown id rejects the whole submission.

        Every order is checked before anything is written (one invalid order rejects all).
        Without dependencies, more than SUBMIT_CHUNK orders are written in transactions of
        SUBMIT_CHUNK, on PostgreSQL two at a time: if one fails (an idempotency conflict),
        its error is raised, the chunks before it (and one beside it) stay and no later one
        is written."""
        items = list(orders)
        if len(items) < 100:
            return self._submit_many(items)
        # Thousands of specs, orders and rows are built at once and all of them survive to the
        # end: at the batch threshold (20,000) a 50k submission took 15 young collections,
        # each walking objects that all live on (0.14 s); at 100,000, 4 (0.08 s).
        with fewer_collections(SUBMIT_GC_THRESHOLD):
            return self._submit_many(items)

    def _submit_many(self, items: list[Mapping[str, Any]]) -> list[TaskOrder]:
        now, limits = self.clock.now(), self.limits
        traced = tracer() is not None  # asked once, not per task
        # Every order is checked before anything is written: one bad order rejects them all.
        checked = check_orders(items, now=now, limits=limits, traced=traced)
        now = self.clock.now()
        if len(items) <= SUBMIT_CHUNK or any(
            isinstance(c, TaskSpec) and c.depends_on for c in checked
        ):
            return self.store.task_create_many(build_specs(items, checked, limits, traced), now)
        if traced:  # a span belongs to the submitter's context, so no other thread makes one
            out: list[TaskOrder] = []
            for a in range(0, len(items), SUBMIT_CHUNK):
                b = a + SUBMIT_CHUNK
                specs = build_specs(items[a:b], checked[a:b], limits, traced)
                out.extend(self.store.task_create_many(specs, now))
            return out
        return write_chunks(self.store, items, checked, limits, now, SUBMIT_CHUNK)

    # -- reading and steering ------------------------------------------------------------------

    def get_task(self, task_id: str, *, tenant_id: str | None = None) -> TaskOrder:
        return self.store.task_get(canonical_uuid(task_id), tenant_id)

    def list_tasks(
        self, *, after: str | None = None, limit: int = 100, **filters: Any
    ) -> list[TaskOrder]:
        """Newest first, the tasks that are not deleted; `deleted=True`: only the deleted
        ones (the recycle bin). Filters: status, task_type, task_category, tag, batch_id,
        project_id, env, tenant_id, created_from, created_to, deleted."""
        check_member("status", filters.get("status"), TaskStatus)
        if not isinstance(filters.get("deleted", False), bool):
            raise ValidationError.single("deleted", "must be true or false")
        return self.store.task_list(TaskFilter(**filters), after=after, limit=limit)

    def cancel(
        self, task_id: str, *, reason: str | None = None, tenant_id: str | None = None
    ) -> TaskOrder:
        """Cancel a task: PENDING/QUEUED at once; RUNNING is asked to stop and ends CANCELLED
        when its handler does."""
        return self.store.task_cancel(
            canonical_uuid(task_id), self.clock.now(), tenant_id=tenant_id, reason=reason)

    def retry(self, task_id: str, *, tenant_id: str | None = None) -> TaskOrder:
        """Queue a FAILED, CANCELLED, TIMEOUT or DEAD_LETTER task again with fresh retries."""
        return self.store.task_retry(canonical_uuid(task_id), self.clock.now(), tenant_id=tenant_id)

    def delete_task(
        self, task_id: str, *, expected_version: int | None = None,
        tenant_id: str | None = None,
    ) -> TaskOrder:
        """Soft-delete a finished task (SUCCESS, FAILED, CANCELLED, TIMEOUT, DEAD_LETTER):
        it gets `deleted_at`, leaves list_tasks() for list_tasks(deleted=True) and refuses
        cancel, retry and update (TaskDeleted) until restored; get_task still reads it.
        An unfinished task raises TaskUnfinished (cancel it first); one already deleted is
        returned as it is. With `expected_version`, VersionConflict unless the task is still
        at that task_version."""
        return self.store.task_delete(
            canonical_uuid(task_id), self.clock.now(), tenant_id=tenant_id,
            expected_version=expected_version,
        )

    def restore_task(
        self, task_id: str, *, expected_version: int | None = None,
        tenant_id: str | None = None,
    ) -> TaskOrder:
        """Take a deleted task out of the recycle bin (`deleted_at` cleared); one that is
        not deleted is returned as it is."""
        return self.store.task_restore(
            canonical_uuid(task_id), self.clock.now(), tenant_id=tenant_id,
            expected_version=expected_version,
        )

    def update_task(
        self, task_id: str, expected_version: int, *, tenant_id: str | None = None,
        **changes: Any,
    ) -> TaskOrder:
        """Change fields of a task that still has `task_version == expected_version`."""
        checked = self._validate_changes(changes)
        return self.store.task_update(
            canonical_uuid(task_id), expected_version, checked, self.clock.now(),
            tenant_id=tenant_id,
        )

    def _validate_changes(self, changes: Mapping[str, Any]) -> dict[str, Any]:
        from creep.storage.common import NOT_NULL_UPDATES, UPDATABLE_FIELDS

        unknown = sorted(set(changes) - UPDATABLE_FIELDS)
        if unknown:
            raise ValidationError([(n, "cannot be changed after creation") for n in unknown])
        # Validated as a new task's fields, None would mean "the default": priority=None
        # set 50 instead of being refused.
        nulls = [name for name in NOT_NULL_UPDATES if name in changes and changes[name] is None]
        if nulls:
            raise ValidationError([(name, "must not be null") for name in nulls])
        probe = {"task_type": "X", **changes}
        spec = self.validate(probe)
        return {name: getattr(spec, name) for name in changes}

    def task_events(self, task_id: str, *, tenant_id: str | None = None) -> list[TaskEvent]:
        return self.store.task_events(canonical_uuid(task_id), tenant_id)

    def events_after(
        self, cursor: str | None = None, *, limit: int = 500, task_id: str | None = None,
        tenant_id: str | None = None,
    ) -> list[TaskEvent]:
        """Events after `cursor` (None: from the start), oldest first; each carries the cursor
        to continue from."""
        return self.store.task_events_after(
            cursor, limit=limit, task_id=canonical_uuid(task_id), tenant_id=tenant_id
        )

    def maintain(self, timeout_grace: float = 5.0) -> MaintenanceReport:
        """Run the leader-only sweeps once: promote due tasks, rescue expired claims, time out
        overdue ones."""
        return self.store.task_maintain(self.clock.now(), self.backoff, timeout_grace)

    # -- workers -------------------------------------------------------------------------------

    def worker(self, settings: WorkerSettings | None = None, **options: Any) -> Worker:
        settings = settings or WorkerSettings(**{"backoff": self.backoff, **options})
        return Worker(self.store, self.handlers, settings, clock=self.clock)

    def run_worker(
        self, *, burst: bool = False, install_signals: bool = True, **options: Any
    ) -> dict[str, int]:
        """Run a worker in this thread until stopped (SIGTERM/SIGINT: graceful) or, with
        burst=True, until nothing is runnable now."""
        worker = self.worker(**options)
        return run_to_end(worker.run(burst=burst, install_signals=install_signals))

    # -- task artifacts (seed 004's task_assets) -----------------------------------------------

    @property
    def artifacts(self) -> ArtifactService:
        """Artifact operations on this app's database and artifact directory."""
        return ArtifactService(
            self.store, BlobStore(self.artifact_dir), self.clock, self.artifact_max_bytes
        )

    def put_artifact(
        self, task_id: str, content: bytes | BinaryIO, *, kind: str, file_name: str,
        mime_type: str | None = None, metadata: dict[str, Any] | None = None,
        tenant_id: str | None = None,
    ) -> Artifact:
        """Store a file of a task (kind input/output/preview/log); equal content is stored once.
        A deleted task (in the recycle bin) takes none: TaskDeleted until it is restored."""
        return self.artifacts.put(
            task_id, content, kind=kind, file_name=file_name, mime_type=mime_type,
            metadata=metadata, tenant_id=tenant_id,
        )

    def get_artifact(self, artifact_id: str, *, tenant_id: str | None = None) -> Artifact:
        return self.artifacts.get(artifact_id, tenant_id)

    def list_artifacts(
        self, task_id: str, *, kind: str | None = None, tenant_id: str | None = None
    ) -> list[Artifact]:
        return self.artifacts.list_for_task(task_id, tenant_id, kind)

    def read_artifact(
        self, artifact_id: str, *, tenant_id: str | None = None
    ) -> tuple[Artifact, bytes]:
        return self.artifacts.read(artifact_id, tenant_id)

    def reconcile_artifacts(
        self, *, repair: bool = False, orphan_grace: float = 3600.0
    ) -> ReconcileReport:
        """Compare the artifact index with the files on disk; with repair, fix what can be."""
        return reconcile(
            self.store, BlobStore(self.artifact_dir), self.clock, repair=repair,
            orphan_grace=orphan_grace,
        )
