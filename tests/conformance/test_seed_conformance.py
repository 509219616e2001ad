"""The seeds' field rules through the Python API, on SQLite and PostgreSQL.

Seed 001 §3.2 (AssetEvent): an event reported from outside a task may name the TaskOrder that
caused it (`task_id`) and the lease it is tied to (`lease_id`); both must be real and agree
with the event's asset and tenant. Seed 003 (TaskLock 验证规则): `expires_at` > `acquired_at`,
for every TTL the Python API takes and in both schemas."""

from __future__ import annotations

import math
import sqlite3
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from creep import Creep, FrozenClock, ValidationError
from creep.domain.lease import LeaseStatus
from creep.domain.task import TaskStatus
from creep.engine.scheduler import SCHEDULER_LOCK
from creep.storage import open_store


def _fields(exc: pytest.ExceptionInfo[ValidationError]) -> list[str]:
    return [field for field, _ in exc.value.errors]


def _leased_task(app: Creep, n: int = 1, tenant_id: str = "default") -> tuple[str, str, str]:
    """A finished task that held one lease on a fresh asset: (task_id, lease_id, asset_id)."""
    kind = f"LEASED_{uuid.uuid4().hex[:8]}"
    asset = app.create_asset(sku_category="RAW_NET", sku_code=f"ip.uk.{kind}.{n}",
                             tenant_id=tenant_id)

    @app.handler(kind)
    async def run(ctx: Any) -> None:
        return None

    task = app.submit(task_type=kind, tenant_id=tenant_id, resource_hints=[
        {"sku_category": "RAW_NET", "sku_code": f"ip.uk.{kind}.{n}"}])
    app.run_worker(burst=True)
    [lease] = app.list_leases(task_id=task.task_id)
    assert lease.asset_id == asset.asset_id
    return task.task_id, lease.lease_id, asset.asset_id


# -- bug: a reported event's task_id -------------------------------------------------------------


def test_reported_event_carries_the_task_that_caused_it(app: Creep) -> None:
    """Seed 001 §3.2: "**task_id** (`uuid`, optional) — 若该事件是由某个 Task 引发，则挂上
    `TaskOrder.task_id`". report_asset_event takes task_id (with the task's lease_id, as in
    the seed's scenario 1); the event carries the task id and the task's correlation_id, so
    the task's event list and its correlation timeline both show it."""  # noqa: RUF002
    task_id, lease_id, asset_id = _leased_task(app)
    task = app.get_task(task_id)
    event = app.report_asset_event(
        asset_id=asset_id, task_id=task_id, lease_id=lease_id, event_type="HTTP_PROBE_FAIL",
        http_status=403, latency_ms=850, severity="WARN", retryable=True,
    )
    assert (event.task_id, event.lease_id) == (task_id, lease_id)
    assert event.correlation_id == task.correlation_id
    assert event.event_id in [e.event_id for e in app.asset_events(task_id=task_id)]
    assert event.event_id in [e.event_id for e in app.asset_timeline(task.correlation_id)]
    # A task that held no lease may be named too.
    plain = app.submit(task_type="NO_LEASE")
    other = app.report_asset_event(asset_id=asset_id, task_id=plain.task_id, event_type="X")
    assert (other.task_id, other.lease_id) == (plain.task_id, None)
    assert [e.event_id for e in app.asset_events(task_id=plain.task_id)] == [other.event_id]


def test_reported_event_takes_its_task_from_the_lease_it_names(app: Creep) -> None:
    """Seed 001 §3.2: `task_id` — "若该事件是由某个 Task 引发，则挂上 `TaskOrder.task_id`";
    a lease is one task's hold, so an event naming only the lease was caused by that task
    and is stored with its task_id and correlation_id (it was stored with neither)."""  # noqa: RUF002
    task_id, lease_id, asset_id = _leased_task(app)
    event = app.report_asset_event(asset_id=asset_id, lease_id=lease_id,
                                   event_type="HTTP_PROBE_FAIL")
    assert event.task_id == task_id
    assert event.correlation_id == app.get_task(task_id).correlation_id
    assert event.event_id in [e.event_id for e in app.asset_events(task_id=task_id)]


def test_reported_event_naming_an_unknown_or_foreign_task_is_refused(app: Creep) -> None:
    """Seed 001 §3.2: `task_id` is a `TaskOrder.task_id`; an id no task of the reporting
    tenant has (unknown, or another tenant's) is a ValidationError on task_id and nothing is
    stored. A correlation_id other than the named task's is refused as on the handler path."""
    asset = app.create_asset(sku_category="RAW_NET", sku_code="ip.uk.1")
    theirs = app.submit(task_type="T", tenant_id="other")
    for task_id in (str(uuid.uuid4()), theirs.task_id):
        with pytest.raises(ValidationError) as exc:
            app.report_asset_event(asset_id=asset.asset_id, task_id=task_id, event_type="X")
        assert _fields(exc) == ["task_id"]
    mine = app.submit(task_type="T")
    with pytest.raises(ValidationError) as exc:
        app.report_asset_event(asset_id=asset.asset_id, task_id=mine.task_id,
                               correlation_id="not-the-task's", event_type="X")
    assert _fields(exc) == ["correlation_id"]
    assert [e.event_type for e in app.asset_events(asset_id=asset.asset_id)] == ["IMPORTED"]


# -- bug: a reported event's lease_id ------------------------------------------------------------


def test_reported_event_must_name_a_lease_of_its_asset_tenant_and_task(app: Creep) -> None:
    """Seed 001 §3.2: `asset_id` is "此事件对应的资产 ID" and `lease_id` the lease the event
    is tied to. A lease that does not exist, is another tenant's, is held on another asset or
    belongs to another task than the one named is a ValidationError on lease_id (each was
    stored), and nothing is written."""
    task_a, lease_a, asset_a = _leased_task(app, 1)
    task_b, _lease_b, asset_b = _leased_task(app, 2)
    _task_x, lease_x, asset_x = _leased_task(app, 3, tenant_id="other")
    bad: list[dict[str, Any]] = [
        {"asset_id": asset_b, "lease_id": lease_a},  # another asset's lease
        {"asset_id": asset_a, "lease_id": str(uuid.uuid4())},  # no such lease
        {"asset_id": asset_a, "lease_id": lease_x},  # another tenant's lease
        {"asset_id": asset_a, "lease_id": lease_a, "task_id": task_b},  # another task's
    ]
    assets = (asset_a, asset_b, asset_x)
    before = {a: len(app.asset_events(asset_id=a)) for a in assets}
    for fields in bad:
        with pytest.raises(ValidationError) as exc:
            app.report_asset_event(event_type="HTTP_PROBE_FAIL", **fields)
        assert _fields(exc) == ["lease_id"], fields
    assert {a: len(app.asset_events(asset_id=a)) for a in assets} == before
    ok = app.report_asset_event(event_type="X", asset_id=asset_a, lease_id=lease_a,
                                task_id=task_a)
    assert (ok.asset_id, ok.lease_id, ok.task_id) == (asset_a, lease_a, task_a)


def test_handler_event_must_name_a_lease_of_its_asset(app: Creep) -> None:
    """Seed 001 §3.2: `asset_id` is "此事件对应的资产 ID"; ctx.report_event naming its own
    lease together with another asset stored the pair unchecked. It is a ValidationError on
    lease_id, as an external report's is."""
    other = app.create_asset(sku_category="RAW_NET", sku_code="ip.uk.other")
    app.create_asset(sku_category="RAW_NET", sku_code="ip.uk.mine")
    seen: list[str] = []

    @app.handler("MISMATCH")
    async def run(ctx: Any) -> None:
        [lease] = await ctx.leases()
        try:
            await ctx.report_event("PROBE", asset_id=other.asset_id, lease_id=lease.lease_id)
        except ValidationError as exc:
            seen.extend(field for field, _ in exc.errors)

    app.submit(task_type="MISMATCH", resource_hints=[
        {"sku_category": "RAW_NET", "sku_code": "ip.uk.mine"}])
    app.run_worker(burst=True)
    assert seen == ["lease_id"]
    assert [e.event_type for e in app.asset_events(asset_id=other.asset_id)] == ["IMPORTED"]


# -- bug: a TaskLock that expires when (or before) it is taken -----------------------------------


@pytest.mark.parametrize("ttl", [0, -5, 0.4, math.nan, math.inf, True, "10"])
def test_scheduler_lock_ttl_must_keep_expiry_after_acquisition(
    app: Creep, ttl: Any
) -> None:
    """Seed 003 TaskLock 验证规则: "`expires_at` > `acquired_at`". app.scheduler(lock_ttl=0)
    wrote the creep.scheduler lock with expires_at == acquired_at (a negative TTL: before it,
    and that scheduler never led). A TTL below the CLI's --lock-ttl floor (0.5 s), not
    finite, or not a number is a ValidationError on lock_ttl, and no lock is written."""
    with pytest.raises(ValidationError) as exc:
        app.scheduler(holder_id="A", retention_jobs=[], lock_ttl=ttl)
    assert _fields(exc) == ["lock_ttl"]
    assert app.schedules.lock_get(SCHEDULER_LOCK) is None
    sched = app.scheduler(holder_id="A", retention_jobs=[], lock_ttl=0.5)
    assert sched.run_once().leader
    lock = app.schedules.lock_get(SCHEDULER_LOCK)
    assert lock is not None and lock["expires_at"] - lock["acquired_at"] == timedelta(
        seconds=0.5)


def test_store_lock_ttl_must_keep_expiry_after_acquisition(
    app: Creep, clock: FrozenClock
) -> None:
    """Seed 003 TaskLock 验证规则: "`expires_at` > `acquired_at`". The store's lock_acquire and
    lock_renew (the maintenance leader's lock too) refuse a TTL that breaks it, and a renewal
    by a holder whose clock went back past acquired_at - ttl renews nothing (the row would
    expire before it was taken)."""
    store = app.store
    for ttl in (0, -1.0):
        with pytest.raises(ValidationError) as exc:
            store.lock_acquire("k", "h", ttl, clock.now())
        assert _fields(exc) == ["ttl"]
    assert app.schedules.lock_get("k") is None
    token = store.lock_acquire("k", "h", 5, clock.now())
    assert token is not None
    with pytest.raises(ValidationError) as exc:
        store.lock_renew("k", "h", token, 0, clock.now())
    assert _fields(exc) == ["ttl"]
    assert not store.lock_renew("k", "h", token, 5, clock.now() - timedelta(seconds=6))
    assert store.lock_renew("k", "h", token, 5, clock.now() + timedelta(seconds=1))
    lock = app.schedules.lock_get("k")
    assert lock is not None and lock["expires_at"] > lock["acquired_at"]


def test_lock_release_keeps_released_at_after_acquisition(
    app: Creep, clock: FrozenClock
) -> None:
    """Seed 003 TaskLock 验证规则: "`released_at` >= `acquired_at`（当 `state=released` 时）".
    A holder whose clock went back (an NTP step) released the lock with a released_at before
    its acquired_at; the release stamps the later of the two, and a release on time keeps
    its own instant."""  # noqa: RUF002
    store = app.store
    token = store.lock_acquire("k", "h", 5, clock.now())
    assert token is not None
    assert store.lock_release("k", token, clock.now() - timedelta(hours=1))
    lock = app.schedules.lock_get("k")
    assert lock is not None and lock["state"] == "released"
    assert lock["released_at"] == lock["acquired_at"] == clock.now()
    token = store.lock_acquire("k", "h", 5, clock.now() + timedelta(seconds=1))
    assert token is not None
    assert store.lock_release("k", token, clock.now() + timedelta(seconds=3))
    lock = app.schedules.lock_get("k")
    assert lock is not None and lock["released_at"] - lock["acquired_at"] == timedelta(
        seconds=2)


def _raw(db_url: str, sql: str, params: tuple[Any, ...] = ()) -> None:
    if db_url.startswith("sqlite"):
        conn = sqlite3.connect(db_url.removeprefix("sqlite:///"))
        try:
            conn.execute(sql.replace("%s", "?"), params)
            conn.commit()
        finally:
            conn.close()
        return
    import psycopg

    with psycopg.connect(db_url) as pg:
        pg.execute(sql, params)


def _stamp(db_url: str, minutes: int) -> Any:
    """A lock timestamp as each schema stores it: microseconds (SQLite), timestamptz."""
    at = datetime(2026, 1, 1, tzinfo=UTC) + timedelta(minutes=minutes)
    return int(at.timestamp() * 1_000_000) if db_url.startswith("sqlite") else at


def test_task_locks_check_expiry_after_acquisition_and_migration_fixes_old_rows(
    db_url: str,
) -> None:
    """Seed 003 TaskLock 验证规则: "`expires_at` > `acquired_at`". Neither schema checked it;
    the lock-expiry migration (sqlite 0018, postgres 0019) adds the CHECK on both, and a database holding rows that break it (locks
    written with a TTL of zero or less) migrates: each such row expires 1 µs after it was
    acquired (an `active` one becomes `expired`), every other row is left as it was."""
    store = open_store(db_url)
    try:
        version = 18 if db_url.startswith("sqlite") else 19  # *_lock_expiry.sql
        store.migrate(target=version - 1)
        insert = ("INSERT INTO task_locks (lock_key, holder_id, token, state, acquired_at, "
                  "expires_at, released_at, purpose, created_at, updated_at) "
                  "VALUES (%s, 'h', %s, %s, %s, %s, NULL, 'p', %s, %s)")
        for key, state, expires in (("zero", "active", 0), ("negative", "active", -5),
                                    ("released", "released", -1), ("good", "active", 10)):
            _raw(db_url, insert, (key, str(uuid.uuid4()), state, _stamp(db_url, 0),
                                  _stamp(db_url, expires), _stamp(db_url, 0),
                                  _stamp(db_url, 0)))
        assert store.migrate(target=version) == [version]
        acquired = _stamp(db_url, 0)
        rows = {k: store.lock_get(k) for k in ("zero", "negative", "released", "good")}
        assert {k: (r or {})["state"] for k, r in rows.items()} == {
            "zero": "expired", "negative": "expired", "released": "released", "good": "active"}
        for key in ("zero", "negative", "released"):
            row = rows[key]
            assert row is not None
            assert row["expires_at"] - row["acquired_at"] == timedelta(microseconds=1), key
        good = rows["good"]
        assert good is not None and good["expires_at"] - good["acquired_at"] == timedelta(
            minutes=10)
        try:
            _raw(db_url, insert, ("bad", str(uuid.uuid4()), "active", acquired, acquired,
                                  acquired, acquired))
        except Exception as exc:  # sqlite3.IntegrityError, psycopg.errors.CheckViolation
            refused = str(exc)
        else:
            refused = "nothing"
        assert "task_locks_expiry" in refused
        assert store.lock_get("bad") is None
    finally:
        store.close()


# -- bug: list filters taking a value outside the seed's enums -----------------------------------


def test_list_filters_refuse_values_outside_their_enums(app: Creep) -> None:
    """Seed 000 `status` (PENDING ... DEAD_LETTER), PRODUCT.md Lease `status` (ACTIVE ...
    REVOKED), seed 003 ExecutionState (`state` 必须是有效的 ExecutionState 枚举值) and
    `trigger_type` (scheduled, manual). A filter of list_tasks, list_leases or
    list_executions outside its enum (a typo, the wrong case) answered [] as if nothing
    matched, or raised a bare ValueError; it is a ValidationError naming the filter and its
    values, as list_assets(status=...) and the REST filters (422) are."""
    task = app.submit(task_type="LISTED")
    for call, field, values in (
        (lambda: app.list_tasks(status="queued"), "status", "QUEUED"),
        (lambda: app.list_tasks(status="DONE"), "status", "DEAD_LETTER"),
        (lambda: app.list_leases(status="active"), "status", "REVOKED"),
        (lambda: app.list_executions(state="failed"), "state", "interrupted"),
        (lambda: app.list_executions(trigger_type="cron"), "trigger_type", "manual"),
    ):
        with pytest.raises(ValidationError) as exc:
            call()
        assert _fields(exc) == [field]
        assert values in exc.value.errors[0][1]
    # Every value of each enum is still a filter (as a string or as the enum member).
    assert [t.task_id for t in app.list_tasks(status="QUEUED")] == [task.task_id]
    assert [t.task_id for t in app.list_tasks(status=TaskStatus.QUEUED)] == [task.task_id]
    assert app.list_leases(status=LeaseStatus.ACTIVE) == []
    assert app.list_executions(state="interrupted", trigger_type="manual") == []


# -- bug: the audit log's retention ran at another hour than the seed's --------------------------


def test_builtin_retention_schedules_run_at_the_seed_times(app: Creep) -> None:
    """Seed 003 保留期策略: task_executions 90 天, 每天 2AM; task_locks 7 天（已释放）, 每天 3AM;
    audit_events 90 天, 每天 2AM. A fresh install's built-in schedules carry those periods
    and times (UTC); the audit purge ran at 03:15."""  # noqa: RUF002
    app.scheduler(holder_id="R").run_once()  # installs the built-in schedules
    builtin = {s.name: s for s in app.list_schedules(tenant_id="_system")}
    seed = {"creep.retention.executions": ("0 2 * * *", 90.0),
            "creep.retention.locks": ("0 3 * * *", 7.0),
            "creep.retention.audit": ("0 2 * * *", 90.0)}
    for name, (cron, days) in seed.items():
        job = builtin[name]
        assert (job.cron_expr, job.timezone, job.data) == (
            cron, "UTC", f'{{"older_than_days":{days}}}'), name
        assert job.enabled and job.next_run is not None


# -- bug: a long error stack kept its bottom, not its top ----------------------------------------


def test_execution_error_stack_keeps_the_top_of_the_stack(app: Creep) -> None:
    """Seed 003 数据约束: `TaskExecution.error_stack` 10KB, "超出截断保留栈顶" (cut, keeping the
    top of the stack). A Python traceback lists the most recent call last: the cut kept the
    first 10 KB, the outermost frames, and lost the frame that raised and the exception
    itself (here the RuntimeError, behind a long chained ValueError). It now keeps the last
    10 KB, flagged error_stack_truncated; error_message is the exception's line."""

    def cause() -> None:
        raise ValueError("é" * 5000)  # 10,000 bytes of UTF-8: the stack passes 10 KB

    @app.handler("STACKED")
    def run(ctx: Any) -> None:
        try:
            cause()
        except ValueError as exc:
            raise RuntimeError("the top of the stack") from exc

    sched = app.create_schedule(name="stacked", type="STACKED", interval=3600, max_retries=0)
    fired = app.trigger_schedule(sched.uid, trigger_by="ops")
    app.run_worker(burst=True)
    app.scheduler(holder_id="S", retention_jobs=[]).run_once()  # executions follow tasks
    task = app.get_task(str(fired.task_id))
    execution = app.get_execution(fired.execution_uid)
    assert task.status == "DEAD_LETTER" and task.last_error is not None
    assert execution.state == "failure" and execution.error_stack_truncated
    stack = execution.error_stack
    assert stack is not None and len(stack.encode()) <= 10 * 1024
    assert stack.rstrip().endswith("RuntimeError: the top of the stack")
    assert task.last_error.endswith(stack)  # its end, cut at a character boundary
    assert "RuntimeError: the top of the stack" in (execution.error_message or "")
