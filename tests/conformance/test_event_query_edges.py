"""The query side of asset events (seed 001): a task's events after retention deleted it,
auto-ban over failures reported out of order, causation chains longer than 1,000 events.
Both backends (the conformance `app` / `clock` fixtures)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest

from creep import Creep, Fail, FrozenClock, NotFound, TaskContext, ValidationError
from creep.domain.asset import AssetStatus

T0 = datetime(2026, 1, 1, tzinfo=UTC)
NET = {"sku_category": "RAW_NET", "sku_code": "ip.*"}


@pytest.fixture
def clock() -> FrozenClock:
    return FrozenClock(T0)


def test_asset_events_by_task_are_lost_once_task_retention_deleted_the_task(
    app: Creep, clock: FrozenClock
) -> None:
    """Asset events are append-only (the black box, seed 001: "按 Task 重建执行轨迹"), and they
    outlive the task row that creep.retention.tasks deletes after 30 days; leases and ledger
    entries by task_id still read back. asset_events(task_id=) filters on the task row's
    correlation_id (a sub-select on tasks), so once the task is gone it answers [] although
    asset_events(asset_id=) and GET /v1/events?task_id= still show the task's events."""
    asset = app.create_asset(sku_category="RAW_NET", sku_code="ip.1", cost_per_lease="0.05",
                             currency="USD")

    @app.handler("BAD")
    async def bad(ctx: TaskContext) -> None:
        await ctx.report_event("HTTP_PROBE_FAIL", http_status=403)
        raise Fail("HARD_FAIL", "no")

    task = app.submit(task_type="BAD", resource_hints=[NET])
    app.run_worker(burst=True, install_signals=False)
    before = [e.event_type for e in app.asset_events(task_id=task.task_id)]
    assert before == ["ALLOCATED", "HTTP_PROBE_FAIL", "TASK_FAIL", "RELEASED"]

    sch = app.scheduler(holder_id="A")  # the default retention jobs
    sch.run_once()
    clock.advance(days=31)
    sch.run_once()  # creep.retention.tasks deletes the finished task
    with pytest.raises(NotFound):
        app.get_task(task.task_id)
    # the events, the lease and the ledger entry of the task are all still there
    of_task = [e.event_type for e in app.asset_events(asset_id=asset.asset_id)
               if e.task_id == task.task_id]
    assert of_task == before
    assert len(app.list_leases(task_id=task.task_id)) == 1
    assert len(app.ledger_entries(task_id=task.task_id)) == 1
    # ... but not by task
    assert [e.event_type for e in app.asset_events(task_id=task.task_id)] == before


def test_failures_reported_out_of_order_never_reach_the_auto_ban(
    app: Creep, clock: FrozenClock
) -> None:
    """Seed 001 scenario 1 -> 2: max_failures failures on one asset within window_seconds ->
    ASSET_BANNED. Events may carry an explicit past occurred_at (seed 001: recorded_at may be
    later than occurred_at, e.g. asynchronous callbacks or batch imports), so they can arrive
    out of order. Only failures up to the reported one's occurred_at were counted: five 403s
    within five seconds, the latest one reported first, never banned the asset."""
    app.set_ban_policy("RAW_NET", max_failures=5, window_seconds=60)
    shuffled = app.create_asset(sku_category="RAW_NET", sku_code="ip.1", status="READY")
    in_order = app.create_asset(sku_category="RAW_NET", sku_code="ip.2", status="READY")
    clock.advance(100)
    for asset_id, seconds in ((in_order.asset_id, [1, 2, 3, 4, 5]),
                              (shuffled.asset_id, [5, 1, 2, 3, 4])):
        for s in seconds:
            app.report_asset_event(asset_id=asset_id, event_type="HTTP_PROBE_FAIL",
                                   http_status=403, occurred_at=T0 + timedelta(seconds=s))
    assert app.get_asset(in_order.asset_id).status is AssetStatus.BANNED
    failures = app.asset_events(asset_id=shuffled.asset_id, event_type="HTTP_PROBE_FAIL")
    assert len(failures) == 5
    assert max(e.occurred_at for e in failures) - min(e.occurred_at for e in failures) <= (
        timedelta(seconds=60))
    assert app.get_asset(shuffled.asset_id).status is AssetStatus.BANNED


def test_causation_chain_stops_at_1000_events_short_of_its_root(app: Creep) -> None:
    """asset_event_chain (and GET /v1/events/{id}/chain) is documented as "the event, then its
    cause, its cause's cause ... up to the root". asset_store.asset_event_chain stops at
    max_depth=1000 without saying so: a 1005-event chain comes back as 1000 events whose last
    one still has a causation_id (the root is never reached). Cycles are already caught by
    the `seen` set, so the cap is not needed for termination."""
    asset = app.create_asset(sku_category="RAW_NET", sku_code="ip.1")
    root = app.report_asset_event(asset_id=asset.asset_id, event_type="L0")
    prev = root
    for i in range(1, 1005):
        prev = app.report_asset_event(asset_id=asset.asset_id, event_type=f"L{i}",
                                      causation_id=prev.event_id)
    chain = app.asset_event_chain(prev.event_id)
    assert chain[-1].causation_id is None and chain[-1].event_id == root.event_id
    assert len(chain) == 1005


def test_an_event_cannot_name_another_tenants_event_as_its_cause(app: Creep) -> None:
    """causation_id names the event that caused this one: it must be an event of the same
    tenant (a ValidationError on causation_id, like an unknown one, reported from outside a
    task or by a handler), or an admin's causation chain walks into another tenant."""
    theirs = app.create_asset(sku_category="RAW_NET", sku_code="ip.a", tenant_id="a")
    cause = app.report_asset_event(asset_id=theirs.asset_id, event_type="A_SECRET",
                                   tenant_id="a")
    mine = app.create_asset(sku_category="RAW_NET", sku_code="ip.b", tenant_id="b")
    for causation_id in (cause.event_id, str(uuid.uuid4())):
        with pytest.raises(ValidationError) as exc:
            app.report_asset_event(asset_id=mine.asset_id, event_type="B_EVENT",
                                   causation_id=causation_id, tenant_id="b")
        assert [f for f, _ in exc.value.errors] == ["causation_id"]
    refused: list[ValidationError] = []

    @app.handler("REPORT")
    async def report(ctx: TaskContext) -> None:
        try:
            await ctx.report_event("B_EVENT", causation_id=cause.event_id)
        except ValidationError as e:
            refused.append(e)

    app.submit(task_type="REPORT", tenant_id="b", resource_hints=[NET])
    app.run_worker(burst=True, install_signals=False)
    assert [[f for f, _ in e.errors] for e in refused] == [["causation_id"]]
    # Nothing of b's names a's event; b's own events still chain.
    assert [e.event_type for e in app.asset_events(asset_id=mine.asset_id)
            if e.event_type == "B_EVENT"] == []
    own = app.report_asset_event(asset_id=mine.asset_id, event_type="B_ROOT", tenant_id="b")
    child = app.report_asset_event(asset_id=mine.asset_id, event_type="B_CHILD",
                                   causation_id=own.event_id, tenant_id="b")
    assert [e.event_id for e in app.asset_event_chain(child.event_id)] == [
        child.event_id, own.event_id]
