"""Assets, leases, ledger and asset events through the public Python API, on every backend."""

from __future__ import annotations

import sqlite3
import uuid
from datetime import timedelta
from decimal import Decimal
from typing import Any
from urllib.parse import unquote

import pytest

from creep import (
    Creep,
    Fail,
    FrozenClock,
    IllegalTransition,
    NotFound,
    Retry,
    TaskContext,
    TaskStatus,
    ValidationError,
    VersionConflict,
)
from creep.domain.asset import AssetStatus
from creep.domain.lease import LeaseStatus
from creep.domain.ledger import BudgetExceeded

NET = {"sku_category": "RAW_NET", "sku_code": "ip.residential.uk.*"}


def ip(i: int, **extra: Any) -> dict[str, Any]:
    return {"sku_category": "RAW_NET", "sku_code": f"ip.residential.uk.{i}",
            "attributes": {"geo": "GB"}, **extra}


def vcc(i: int, **extra: Any) -> dict[str, Any]:
    return {"sku_category": "RAW_FUND", "sku_code": f"vcc.uk.visa.onetime.{i}", **extra}


def drain(app: Creep) -> None:
    app.run_worker(burst=True, install_signals=False, concurrency=4)


def raw_execute(db_url: str, sql: str) -> None:
    """Run SQL on a connection of our own, bypassing creep entirely."""
    if db_url.startswith("sqlite"):
        conn = sqlite3.connect(db_url.removeprefix("sqlite:///"))
        try:
            conn.execute(sql)
            conn.commit()
        finally:
            conn.close()
        return
    import psycopg

    base, _, query = db_url.partition("?")
    schema = unquote(query).split("search_path=")[1]
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f'SET search_path TO "{schema}"')
        conn.execute(sql)


# -- the pool --------------------------------------------------------------------------------


def test_import_get_list_update_with_versions(app: Creep) -> None:
    made = app.import_assets([ip(1), ip(2, status="NEW"), vcc(1, cost_per_lease="0.25")])
    assert [a.status for a in made] == [AssetStatus.READY, AssetStatus.NEW, AssetStatus.READY]
    got = app.get_asset(made[2].asset_id)
    assert got.cost_per_lease == Decimal("0.25") and got.version == 1
    assert got.current_concurrency == 0 and got.health_score == 100
    assert [a.asset_id for a in app.list_assets(sku_code="ip.residential.uk.*")] == sorted(
        a.asset_id for a in made[:2])
    assert len(app.list_assets(sku_category="RAW_FUND")) == 1
    with pytest.raises(NotFound):
        app.get_asset(made[0].asset_id, tenant_id="someone-else")

    updated = app.update_asset(made[1].asset_id, 1, status="READY", max_concurrency=3,
                               attributes={"geo": "FR"})
    assert updated.version == 2 and updated.status is AssetStatus.READY
    assert updated.max_concurrency == 3 and updated.attributes == {"geo": "FR"}
    with pytest.raises(VersionConflict):
        app.update_asset(made[1].asset_id, 1, health_score=50)
    with pytest.raises(IllegalTransition):
        app.update_asset(made[1].asset_id, 2, status="READY")  # a self-transition
    with pytest.raises(IllegalTransition):
        app.update_asset(made[1].asset_id, 2, status="NEW")
    both = app.update_assets([(made[0].asset_id, 1, {"health_score": 80}),
                              (made[2].asset_id, 1, {"cost_per_lease": "1.5"})])
    assert [a.version for a in both] == [2, 2]
    assert app.get_asset(made[2].asset_id).cost_per_lease == Decimal("1.5")
    kinds = [e.event_type for e in app.asset_events(asset_id=made[1].asset_id)]
    assert kinds == ["IMPORTED", "UPDATED", "STATUS_READY"]


def test_invalid_assets_name_field_and_rule(app: Creep) -> None:
    with pytest.raises(ValidationError) as exc:
        app.import_assets([ip(1), {"sku_category": "RAW_NET", "sku_code": "x.*",
                                   "cost_per_lease": 0.1, "health_score": 101,
                                   "max_concurrency": 0}])
    fields = {f for f, _ in exc.value.errors}
    assert fields == {"assets[1].sku_code", "assets[1].cost_per_lease",
                      "assets[1].health_score", "assets[1].max_concurrency"}
    assert app.list_assets() == []  # nothing of a bad import is written


def test_database_refuses_illegal_transition_and_over_allocation(
    app: Creep, db_url: str
) -> None:
    a = app.create_asset(**ip(1), status="NEW")
    with pytest.raises(Exception, match="illegal asset transition"):
        raw_execute(db_url, f"UPDATE assets SET status = 'IN_USE' WHERE asset_id = '{a.asset_id}'")
    with pytest.raises(Exception, match=r"(?i)check"):
        raw_execute(db_url, "UPDATE assets SET current_concurrency = max_concurrency + 1 "
                            f"WHERE asset_id = '{a.asset_id}'")


# -- matching --------------------------------------------------------------------------------


def test_matching_prefers_healthier_then_less_loaded_then_cheaper(app: Creep) -> None:
    a, b, c, d = app.import_assets([
        ip(1, health_score=90), ip(2, health_score=95, cost_per_lease="3"),
        ip(3, health_score=95, cost_per_lease="1"), ip(4, health_score=40),
    ])
    got: list[set[str]] = []

    @app.handler("USE")
    async def use(ctx: TaskContext) -> None:
        got.append({lease.asset_id for lease in await ctx.leases()})

    one = app.submit(task_type="USE", resource_hints=[NET],
                     constraints={"min_health_score": 50})
    drain(app)
    two = app.submit(task_type="USE", resource_hints=[{**NET, "min_count": 2}],
                     constraints={"min_health_score": 50})
    drain(app)
    # equal health -> cheaper (c over b); health beats cost (b over the free a); d is
    # under min_health_score.
    assert got == [{c.asset_id}, {b.asset_id, c.asset_id}]
    assert app.get_task(two.task_id).status is TaskStatus.SUCCESS
    assert len(app.get_task(two.task_id).lease_ids) == 2
    assert len(app.get_task(one.task_id).lease_ids) == 1
    assert d.asset_id not in got[1] and a.asset_id not in got[1]


def test_all_or_nothing_and_no_head_of_line_blocking(app: Creep) -> None:
    app.import_assets([ip(1, max_concurrency=5), vcc(1)])
    app.update_asset(app.list_assets(sku_category="RAW_FUND")[0].asset_id, 1,
                     status="ARCHIVED")  # the only card is gone: RAW_FUND is exhausted
    ran: list[str] = []

    @app.handler("USE")
    async def use(ctx: TaskContext) -> None:
        ran.append(ctx.task_id)

    both = app.submit(task_type="USE", priority=90,
                      resource_hints=[NET, {"sku_category": "RAW_FUND"}])
    net_only = app.submit(task_type="USE", priority=10, resource_hints=[NET])
    plain = app.submit(task_type="USE", priority=5)
    drain(app)
    assert app.get_task(both.task_id).status is TaskStatus.QUEUED
    assert app.get_task(both.task_id).lease_ids == []
    assert app.list_leases(task_id=both.task_id) == []
    assert set(ran) == {net_only.task_id, plain.task_id}
    assert app.get_task(net_only.task_id).status is TaskStatus.SUCCESS
    # the exhausted kind comes back: the waiting task gets both leases at once
    app.create_asset(**vcc(2))
    drain(app)
    assert app.get_task(both.task_id).status is TaskStatus.SUCCESS
    assert len(app.list_leases(task_id=both.task_id)) == 2


def test_attributes_and_exact_codes_filter(app: Creep) -> None:
    uk, fr = app.import_assets([ip(1), {**ip(2), "attributes": {"geo": "FR"}}])

    @app.handler("USE")
    async def use(ctx: TaskContext) -> None:
        return None

    fr_task = app.submit(task_type="USE", resource_hints=[
        {"sku_category": "RAW_NET", "attributes": {"geo": "FR"}}])
    exact = app.submit(task_type="USE", resource_hints=[
        {"sku_category": "RAW_NET", "sku_code": "ip.residential.uk.1"}])
    none = app.submit(task_type="USE", resource_hints=[
        {"sku_category": "RAW_NET", "attributes": {"geo": "US"}}])
    drain(app)
    assert [x.asset_id for x in app.list_leases(task_id=fr_task.task_id)] == [fr.asset_id]
    assert [x.asset_id for x in app.list_leases(task_id=exact.task_id)] == [uk.asset_id]
    assert app.get_task(none.task_id).status is TaskStatus.QUEUED


def test_rare_attributes_in_a_large_pool_are_matched_in_sql(app: Creep) -> None:
    """999 healthier assets do not hide the one that matches (filters run in SQL, not over
    the top candidates); attribute equality is JSON equality (true is not 1)."""
    common = [ip(i, health_score=90, attributes={"geo": "GB", "tier": 1}) for i in range(999)]
    rare = ip(999, health_score=10, max_concurrency=3,
              attributes={"geo": "GB", "tier": 2, "mobile": True})
    made = app.import_assets([*common, rare])

    @app.handler("USE")
    async def use(ctx: TaskContext) -> None:
        return None

    def want(attributes: dict[str, Any]) -> str:
        return app.submit(task_type="USE", resource_hints=[
            {**NET, "attributes": attributes}]).task_id

    tier2, mobile, both = want({"tier": 2}), want({"mobile": True}), want({"tier": 2, "geo": "GB"})
    one, fr = want({"mobile": 1}), want({"tier": 2, "geo": "FR"})
    drain(app)
    for task_id in (tier2, mobile, both):
        assert app.get_task(task_id).status is TaskStatus.SUCCESS
        assert [x.asset_id for x in app.list_leases(task_id=task_id)] == [made[-1].asset_id]
    for task_id in (one, fr):
        assert app.get_task(task_id).status is TaskStatus.QUEUED


def test_no_resource_before_the_deadline_fails_the_task(app: Creep, clock: FrozenClock) -> None:
    @app.handler("USE")
    async def use(ctx: TaskContext) -> None:
        return None

    t = app.submit(task_type="USE", timeout_ms=5000, resource_hints=[NET])
    drain(app)
    assert app.get_task(t.task_id).status is TaskStatus.QUEUED
    clock.advance(4)
    assert app.maintain_assets().no_resource == 0
    clock.advance(2)
    assert app.maintain_assets().no_resource == 1
    done = app.get_task(t.task_id)
    assert done.status is TaskStatus.FAILED and done.result_code == "NO_RESOURCE"
    assert [e.event_type for e in app.task_events(t.task_id)][-1] == "failed"


def test_no_resource_deadline_follows_timeout_changes_and_requeues(
    app: Creep, clock: FrozenClock
) -> None:
    """The deadline is queued_at + timeout_ms as they are now: a shorter timeout set while the
    task waits brings it forward (PostgreSQL keeps it in task_queue's index, migration 0014),
    and a task queued again by hand counts from its new queued_at."""

    @app.handler("USE")
    async def use(ctx: TaskContext) -> None:
        return None

    t = app.submit(task_type="USE", timeout_ms=60_000, resource_hints=[NET])
    drain(app)
    clock.advance(3)
    app.update_task(t.task_id, app.get_task(t.task_id).task_version, timeout_ms=5000)
    assert app.maintain_assets().no_resource == 0
    clock.advance(3)
    assert app.maintain_assets().no_resource == 1
    assert app.get_task(t.task_id).result_code == "NO_RESOURCE"
    app.retry(t.task_id)
    clock.advance(4)
    assert app.maintain_assets().no_resource == 0
    assert app.get_task(t.task_id).status is TaskStatus.QUEUED
    clock.advance(2)
    assert app.maintain_assets().no_resource == 1


# -- leases ----------------------------------------------------------------------------------


def test_lease_lifecycle_cooling_and_task_effects(app: Creep, clock: FrozenClock) -> None:
    a = app.create_asset(**ip(1, cooldown_seconds=30))

    @app.handler("OK")
    async def ok(ctx: TaskContext) -> None:
        assert app.get_asset(a.asset_id).status is AssetStatus.IN_USE
        assert app.get_asset(a.asset_id).current_concurrency == 1

    @app.handler("BAD")
    async def bad(ctx: TaskContext) -> None:
        raise Fail("HARD_FAIL", "nope")

    t = app.submit(task_type="OK", resource_hints=[NET])
    drain(app)
    lease = app.list_leases(task_id=t.task_id)[0]
    assert lease.status is LeaseStatus.RELEASED and lease.released_at == clock.now()
    cooled = app.get_asset(a.asset_id)
    assert cooled.status is AssetStatus.COOLING and cooled.current_concurrency == 0
    assert cooled.health_score == 100  # +1, capped
    # a cooling asset is not leased
    f = app.submit(task_type="BAD", resource_hints=[NET])
    drain(app)
    assert app.get_task(f.task_id).status is TaskStatus.QUEUED
    clock.advance(31)
    assert app.maintain_assets().cooled == 1
    assert app.get_asset(a.asset_id).status is AssetStatus.READY
    drain(app)
    assert app.get_task(f.task_id).status is TaskStatus.FAILED
    assert app.get_asset(a.asset_id).health_score == 95  # TASK_FAIL: -5
    kinds = [e.event_type for e in app.asset_events(asset_id=a.asset_id)]
    assert kinds == ["IMPORTED", "ALLOCATED", "TASK_SUCCESS", "RELEASED", "COOLING_START",
                     "COOLING_END", "ALLOCATED", "TASK_FAIL", "RELEASED", "COOLING_START"]
    fail_ev = app.asset_events(task_id=f.task_id, event_type="TASK_FAIL")[0]
    assert fail_ev.correlation_id == app.get_task(f.task_id).correlation_id
    released = app.asset_events(task_id=f.task_id, event_type="RELEASED")[0]
    assert released.causation_id == fail_ev.event_id


def test_rescued_claim_expires_its_leases_and_heartbeat_renews_them(
    app: Creep, clock: FrozenClock
) -> None:
    a = app.create_asset(**ip(1))
    t = app.submit(task_type="USE", resource_hints=[NET])
    claimed = app.store.task_claim("w1", ["USE"], 10, clock.now(), 10.0)
    assert [c.task.task_id for c in claimed] == [t.task_id]
    lease = app.list_leases(task_id=t.task_id)[0]
    assert lease.status is LeaseStatus.ACTIVE
    assert lease.expires_at == clock.now() + timedelta(seconds=10)
    clock.advance(5)
    app.store.task_heartbeat("w1", [(t.task_id, claimed[0].claim_token)], clock.now(), 10.0)
    renewed = app.list_leases(task_id=t.task_id)[0]
    assert renewed.expires_at is not None and (renewed.expires_at - clock.now()).seconds == 10
    clock.advance(11)
    report = app.maintain()
    assert report.rescued == 1
    assert app.list_leases(task_id=t.task_id)[0].status is LeaseStatus.EXPIRED
    asset = app.get_asset(a.asset_id)
    assert asset.current_concurrency == 0 and asset.status is AssetStatus.READY
    assert asset.health_score == 100  # a lost worker is not the asset's fault
    assert app.get_task(t.task_id).status is TaskStatus.QUEUED


def test_keep_leases_holds_after_success_until_released(app: Creep) -> None:
    a = app.create_asset(**ip(1))

    @app.handler("MONITOR")
    async def monitor(ctx: TaskContext) -> None:
        return None

    t = app.submit(task_type="MONITOR", resource_hints=[NET],
                   constraints={"keep_leases": True})
    drain(app)
    lease = app.list_leases(task_id=t.task_id)[0]
    assert app.get_task(t.task_id).status is TaskStatus.SUCCESS
    assert lease.status is LeaseStatus.ACTIVE and lease.expires_at is None
    assert app.get_asset(a.asset_id).status is AssetStatus.IN_USE
    released = app.release_lease(lease.lease_id)
    assert released.status is LeaseStatus.RELEASED
    assert app.get_asset(a.asset_id).status is AssetStatus.READY
    with pytest.raises(IllegalTransition):
        app.release_lease(lease.lease_id)


# -- ledger and budget -----------------------------------------------------------------------


def test_budget_refuses_the_third_lease(app: Creep) -> None:
    app.create_asset(**ip(1, cost_per_lease="2.00"))

    @app.handler("TRY")
    async def try_(ctx: TaskContext) -> None:
        raise Retry(delay=0)

    t = app.submit(task_type="TRY", max_total_cost="5.00", resource_hints=[NET])
    drain(app)
    done = app.get_task(t.task_id)
    assert done.status is TaskStatus.FAILED and done.result_code == "BUDGET_EXCEEDED"
    assert done.attempt == 2
    entries = app.ledger_entries(task_id=t.task_id)
    assert [e.amount for e in entries] == [Decimal("2.00"), Decimal("2.00")]
    assert sum(e.amount for e in entries) == Decimal("4.00")
    [summary] = app.ledger_summary(task_id=t.task_id)
    assert summary.cost == Decimal("4.00") and summary.currency == "USD"


def test_a_task_whose_priority_changes_while_it_runs_keeps_its_leases_and_costs(
    app: Creep,
) -> None:
    """Leases and ledger entries record the task's priority when written (SQLite's by-task
    indexes lead with it, migration 0013): a task re-prioritised while it holds a lease still
    settles it, budgets its next attempt on every cost, and lists all of them by task."""
    app.create_asset(**ip(1, cost_per_lease="2.00"))
    seen: list[int] = []

    @app.handler("TRY")
    def try_(ctx: Any) -> None:
        task = app.get_task(ctx.task_id)
        seen.append(task.priority)
        app.update_task(ctx.task_id, task.task_version, priority=task.priority + 40)
        raise Retry(delay=0)

    t = app.submit(task_type="TRY", priority=5, max_total_cost="5.00", resource_hints=[NET])
    drain(app)
    done = app.get_task(t.task_id)
    assert seen == [5, 45] and done.priority == 85
    assert done.status is TaskStatus.FAILED and done.result_code == "BUDGET_EXCEEDED"
    leases = app.list_leases(task_id=t.task_id)
    assert [x.status for x in leases] == [LeaseStatus.RELEASED] * 2
    assert [e.amount for e in app.ledger_entries(task_id=t.task_id)] == [Decimal("2.00")] * 2
    assert app.ledger_summary(task_id=t.task_id)[0].cost == Decimal("4.00")
    assert app.list_assets()[0].current_concurrency == 0


def test_each_attempt_appends_its_leases_and_names_them_when_it_starts(app: Creep) -> None:
    app.create_asset(**ip(1))
    app.create_asset(**vcc(1))
    attempts: list[list[str]] = []

    @app.handler("TRY")
    async def try_(ctx: TaskContext) -> None:
        attempts.append(sorted(lease.lease_id for lease in await ctx.leases()))
        if len(attempts) < 2:
            raise Retry(delay=0)

    t = app.submit(task_type="TRY", resource_hints=[NET, {"sku_category": "RAW_FUND"}])
    drain(app)
    done = app.get_task(t.task_id)
    assert done.status is TaskStatus.SUCCESS and done.attempt == 2
    assert [len(x) for x in attempts] == [2, 2] and not set(attempts[0]) & set(attempts[1])
    # tasks.lease_ids keeps every attempt's leases, in the order they were taken.
    assert sorted(done.lease_ids[:2]) == attempts[0]
    assert sorted(done.lease_ids[2:]) == attempts[1]
    started = [e for e in app.task_events(t.task_id) if e.event_type == "started"]
    assert [sorted(e.payload["lease_ids"]) for e in started] == attempts
    assert [e.attempt for e in started] == [1, 2]
    assert all(e.payload["worker_id"] for e in started)
    assert {lease.status for lease in app.list_leases(task_id=t.task_id)} == {
        LeaseStatus.RELEASED}


def test_handler_charges_within_budget_then_fails_over_it(app: Creep) -> None:
    @app.handler("SPEND")
    async def spend(ctx: TaskContext) -> None:
        await ctx.charge("3.00", description="captcha")
        await ctx.earn(Decimal("10"), description="ticket sold")
        with pytest.raises(ValidationError, match="currency"):
            await ctx.charge("1", "EUR")
        await ctx.charge("2.50")  # 5.50 > 5.00: BudgetExceeded, left uncaught

    t = app.submit(task_type="SPEND", max_total_cost="5.00", project_id="p1")
    drain(app)
    done = app.get_task(t.task_id)
    assert done.status is TaskStatus.FAILED and done.result_code == "BUDGET_EXCEEDED"
    [s] = app.ledger_summary(task_id=t.task_id)
    assert (s.cost, s.revenue, s.margin) == (Decimal("3.00"), Decimal("10"), Decimal("7.00"))
    with pytest.raises(BudgetExceeded):
        app.record_ledger_entry(entry_type="COST", amount="2.01", currency="USD",
                                task_id=t.task_id)
    refund = app.record_ledger_entry(entry_type="REFUND", amount="1", currency="USD",
                                     task_id=t.task_id)
    assert refund.project_id == "p1"
    app.record_ledger_entry(entry_type="COST", amount="3.00", currency="USD", task_id=t.task_id)
    assert app.ledger_summary(task_id=t.task_id)[0].cost == Decimal("5.00")


def test_summaries_by_tenant_project_and_time_range(app: Creep, clock: FrozenClock) -> None:
    start = clock.now()
    app.record_ledger_entry(entry_type="COST", amount="1.10", currency="USD",
                            tenant_id="a", project_id="p1")
    app.record_ledger_entry(entry_type="REVENUE", amount="5", currency="USD",
                            tenant_id="a", project_id="p2")
    clock.advance(3600)
    app.record_ledger_entry(entry_type="COST", amount="0.000001", currency="USDT",
                            tenant_id="a", project_id="p1")
    app.record_ledger_entry(entry_type="ADJUSTMENT", amount="-0.10", currency="USD",
                            tenant_id="a", project_id="p1")
    app.record_ledger_entry(entry_type="COST", amount="9", currency="USD", tenant_id="b")
    by_cur = {s.currency: s for s in app.ledger_summary(tenant_id="a")}
    assert by_cur["USD"].cost == Decimal("1.00") and by_cur["USD"].margin == Decimal("4.00")
    assert by_cur["USDT"].cost == Decimal("0.000001")
    first_hour = app.ledger_summary(tenant_id="a", since=start,
                                    until=start.replace(minute=30))
    assert [(s.currency, s.cost, s.revenue) for s in first_hour] == [
        ("USD", Decimal("1.10"), Decimal("5"))]
    p1 = app.ledger_summary(tenant_id="a", project_id="p1")
    assert {(s.currency, s.cost) for s in p1} == {("USD", Decimal("1.00")),
                                                  ("USDT", Decimal("0.000001"))}
    for _ in range(3):  # equal amounts are grouped in SQL; the total stays exact
        app.record_ledger_entry(entry_type="COST", amount="0.1", currency="EUR", tenant_id="c")
    app.record_ledger_entry(entry_type="REFUND", amount="0.10", currency="EUR", tenant_id="c")
    [eur] = app.ledger_summary(tenant_id="c")
    assert (eur.currency, eur.cost, eur.margin) == ("EUR", Decimal("0.2"), Decimal("-0.2"))
    assert str(eur.cost) == "0.20" and eur.entries == 4
    with pytest.raises(ValidationError, match="amount"):
        app.record_ledger_entry(entry_type="COST", amount=0.1, currency="USD")  # type: ignore[arg-type]


def test_append_only_is_enforced_by_the_database(app: Creep, db_url: str) -> None:
    a = app.create_asset(**ip(1))
    app.record_ledger_entry(entry_type="COST", amount="1", currency="USD")
    for table in ("asset_events", "ledger_entries"):
        with pytest.raises(Exception, match="append-only"):
            raw_execute(db_url, f"UPDATE {table} SET tenant_id = 'x'")
        with pytest.raises(Exception, match="append-only"):
            raw_execute(db_url, f"DELETE FROM {table}")
    assert len(app.asset_events(asset_id=a.asset_id)) == 1
    assert len(app.ledger_entries()) == 1


def test_database_refuses_values_outside_the_enumerations(app: Creep, db_url: str) -> None:
    """The enumerated columns of the lease path keep their CHECK constraints (on SQLite
    written with OR since migration 0012): an unknown value is refused, a known one (or a
    NULL severity) is not."""
    a = app.create_asset(**ip(1))
    ts = "1" if db_url.startswith("sqlite") else "now()"
    event = ("INSERT INTO asset_events (event_id, tenant_id, asset_id, event_type, severity, "
             "occurred_at, recorded_at) VALUES ('{id}', 't', '{a}', 'X', {sev}, {ts}, {ts})")
    with pytest.raises(Exception, match=r"(?i)check"):
        raw_execute(db_url, event.format(id=uuid.uuid4(), a=a.asset_id, sev="'LOUD'", ts=ts))
    raw_execute(db_url, event.format(id=uuid.uuid4(), a=a.asset_id, sev="'WARN'", ts=ts))
    raw_execute(db_url, event.format(id=uuid.uuid4(), a=a.asset_id, sev="NULL", ts=ts))
    with pytest.raises(Exception, match=r"(?i)check"):
        raw_execute(db_url, "INSERT INTO ledger_entries (entry_id, tenant_id, entry_type, "
                            f"amount, currency, occurred_at, recorded_at) VALUES "
                            f"('{uuid.uuid4()}', 't', 'GIFT', 1, 'USD', {ts}, {ts})")
    with pytest.raises(Exception, match=r"(?i)check"):
        raw_execute(db_url, "INSERT INTO leases (lease_id, tenant_id, task_id, asset_id, status, "
                            "acquired_at, cost, currency, claim_token, hint_index) VALUES "
                            f"('{uuid.uuid4()}', 't', '{uuid.uuid4()}', '{a.asset_id}', 'LOST', "
                            f"{ts}, 1, 'USD', '{uuid.uuid4()}', 0)")
    written = [e.severity for e in app.asset_events(asset_id=a.asset_id) if e.event_type == "X"]
    assert sorted(written, key=str) == [None, "WARN"]


def test_bulk_rows_sharing_values_read_back_as_written(app: Creep) -> None:
    """Columns with one value in every row of a bulk insert are bound once (both backends):
    NULLs stay NULL, a shared JSON context stays that JSON, the write order is kept."""
    from creep.storage.asset_base import EVENT_FIELDS

    a = app.create_asset(**ip(1))
    store: Any = app.store
    now = app.clock.now()
    base = dict.fromkeys(EVENT_FIELDS)
    base.update(tenant_id=a.tenant_id, asset_id=a.asset_id, event_type="PROBE", source="handler",
                occurred_at=now, recorded_at=now, tags=["t"], context={"k": [1, None]},
                version=1)
    rows = []
    for i in range(3):
        base.update(event_id=str(uuid.uuid4()), message=f"m{i}")
        rows.append(tuple(base[f] for f in EVENT_FIELDS))
    with store._atx() as conn:
        d = store._adialect
        d.bulk_insert(conn, "asset_events", EVENT_FIELDS, [
            tuple(d.ts(v) if f in ("occurred_at", "recorded_at") else
                  d.bulk_js(v) if f in ("tags", "context") else v
                  for f, v in zip(EVENT_FIELDS, r, strict=True)) for r in rows])
    got = [e for e in app.asset_events(asset_id=a.asset_id) if e.event_type == "PROBE"]
    assert [e.message for e in got] == ["m0", "m1", "m2"]
    assert all(e.context == {"k": [1, None]} and e.tags == ["t"] for e in got)
    assert all(e.causation_id is None and e.http_status is None for e in got)


# -- asset events, auto-ban ------------------------------------------------------------------


def test_seed_scenarios_ban_chain_timeline_and_revocation(
    app: Creep, clock: FrozenClock
) -> None:

    """Seed 001: HTTP 403s on one IP (scenario 1) until the policy bans it (scenario 2)."""
    app.set_ban_policy("RAW_NET", max_failures=5, window_seconds=60, tenant_id="tenant_a")
    ip1 = app.create_asset(**ip(1), tenant_id="tenant_a", project_id="project_qa")
    told: list[list[str]] = []

    @app.handler("E2E")
    async def e2e(ctx: TaskContext) -> None:
        for _ in range(5):
            clock.advance(1)
            await ctx.report_event(
                "HTTP_PROBE_FAIL", severity="WARN", http_status=403, latency_ms=850,
                provider_status="OK", error_code="E_HTTP_403",
                error_message="Forbidden by target site", retryable=True,
                message="Target site returned HTTP 403 during checkout step",
                tags=["checkout", "forbidden"],
                context={"url": "https://target.example.com/checkout", "method": "POST"},
            )
        told.append(ctx.revoked_lease_ids)
        raise Fail("BANNED", "the IP was banned")

    t = app.submit(task_type="E2E", tenant_id="tenant_a", project_id="project_qa", env="prod",
                   correlation_id="corr-req-abc", resource_hints=[NET])
    drain(app)
    task = app.get_task(t.task_id)
    assert task.status is TaskStatus.FAILED and task.result_code == "BANNED"
    lease = app.list_leases(task_id=t.task_id)[0]
    assert lease.status is LeaseStatus.REVOKED
    assert told == [[lease.lease_id]]
    banned = app.get_asset(ip1.asset_id)
    assert banned.status is AssetStatus.BANNED and banned.current_concurrency == 0

    timeline = app.asset_timeline("corr-req-abc")
    assert [e.event_type for e in timeline] == [
        "ALLOCATED", *["HTTP_PROBE_FAIL"] * 5, "ASSET_BANNED", "LEASE_REVOKED", "TASK_FAIL"]
    assert [e.occurred_at for e in timeline] == sorted(e.occurred_at for e in timeline)
    probe, ban = timeline[5], timeline[6]
    assert (probe.http_status, probe.latency_ms, probe.retryable) == (403, 850, True)
    assert (probe.task_id, probe.lease_id, probe.old_status) == (t.task_id, lease.lease_id,
                                                                 "IN_USE")
    assert probe.source == "worker_node" and probe.severity == "WARN" and probe.version == 1
    assert ban.causation_id == probe.event_id and ban.correlation_id == "corr-req-abc"
    assert (ban.old_status, ban.new_status, ban.severity) == ("IN_USE", "BANNED", "ERROR")
    assert (ban.source, ban.retryable, ban.project_id, ban.env) == (
        "control_plane", False, "project_qa", "prod")
    assert ban.context["fail_count_window"] == 5 and ban.context["window_s"] == 60
    chain = app.asset_event_chain(timeline[7].event_id)
    assert [e.event_type for e in chain] == ["LEASE_REVOKED", "ASSET_BANNED", "HTTP_PROBE_FAIL"]
    assert chain[-1].causation_id is None
    assert [e.event_type for e in app.asset_events(task_id=t.task_id)] == [
        e.event_type for e in timeline]

    # never leased again until unbanned
    @app.handler("USE")
    async def use(ctx: TaskContext) -> None:
        return None

    later = app.submit(task_type="USE", tenant_id="tenant_a", resource_hints=[NET])
    drain(app)
    assert app.get_task(later.task_id).status is TaskStatus.QUEUED
    app.unban_asset(ip1.asset_id, reason="provider rotated the IP", tenant_id="tenant_a")
    assert app.asset_events(asset_id=ip1.asset_id)[-1].event_type == "UNBANNED"
    drain(app)
    assert app.get_task(later.task_id).status is TaskStatus.SUCCESS


def test_failures_outside_the_window_do_not_ban(app: Creep, clock: FrozenClock) -> None:
    app.set_ban_policy("RAW_NET", max_failures=3, window_seconds=10,
                       failure_event_types=["HTTP_PROBE_FAIL"])
    a = app.create_asset(**ip(1))
    for _ in range(4):
        app.report_asset_event(asset_id=a.asset_id, event_type="HTTP_PROBE_FAIL",
                               http_status=429)
        clock.advance(6)
    assert app.get_asset(a.asset_id).status is AssetStatus.READY
    clock.advance(5)  # the last spaced failure leaves the window
    app.report_asset_event(asset_id=a.asset_id, event_type="OTHER_FAIL")  # not in the policy
    assert app.get_asset(a.asset_id).status is AssetStatus.READY
    for _ in range(3):
        last = app.report_asset_event(asset_id=a.asset_id, event_type="HTTP_PROBE_FAIL")
    assert app.get_asset(a.asset_id).status is AssetStatus.BANNED
    ban = app.asset_events(asset_id=a.asset_id)[-1]
    assert ban.event_type == "ASSET_BANNED" and ban.causation_id == last.event_id


def test_reported_events_are_validated_against_the_seed(app: Creep) -> None:
    a = app.create_asset(**ip(1))
    for bad, field_name in (({"http_status": 99}, "http_status"),
                            ({"http_status": 600}, "http_status"),
                            ({"latency_ms": -1}, "latency_ms"),
                            ({"severity": "FATAL"}, "severity"),
                            ({"retryable": "yes"}, "retryable"),
                            ({"causation_id": "not-a-uuid"}, "causation_id")):
        with pytest.raises(ValidationError) as exc:
            app.report_asset_event(asset_id=a.asset_id, event_type="X", **bad)
        assert [f for f, _ in exc.value.errors] == [field_name]
    with pytest.raises(NotFound):
        app.report_asset_event(asset_id=a.asset_id, event_type="X", tenant_id="other")


def test_sync_handlers_have_the_same_calls(app: Creep) -> None:
    a = app.create_asset(**ip(1, cost_per_lease="0.10"))
    seen: dict[str, object] = {}

    @app.handler("SYNC")
    def sync(ctx: Any) -> None:
        seen["leases"] = [lease.asset_id for lease in ctx.leases()]
        seen["event"] = ctx.report_event("HTTP_PROBE_OK", http_status=200, latency_ms=12)
        ctx.charge("0.15")
        ctx.earn("1")
        seen["revoked"] = ctx.revoked_lease_ids

    t = app.submit(task_type="SYNC", resource_hints=[NET], project_id="p")
    drain(app)
    assert app.get_task(t.task_id).status is TaskStatus.SUCCESS
    assert seen["leases"] == [a.asset_id] and seen["revoked"] == []
    [s] = app.ledger_summary(task_id=t.task_id)
    assert (s.cost, s.revenue, s.entries) == (Decimal("0.25"), Decimal("1"), 3)
    assert [e.event_type for e in app.asset_events(task_id=t.task_id)] == [
        "ALLOCATED", "HTTP_PROBE_OK", "TASK_SUCCESS", "RELEASED"]


def _succeed_all(app: Creep, claimed: list[Any]) -> list[Any]:
    from creep.domain.outcomes import Outcome, OutcomeKind, resolve
    from creep.ports import Completion

    out = []
    for c in claimed:
        o = Outcome(c.task.task_id, c.claim_token, OutcomeKind.SUCCEEDED, result=None,
                    result_json=b"null")
        out.append(Completion(o, resolve(o, attempt=c.task.attempt,
                                         max_attempts=c.task.max_attempts,
                                         now=app.clock.now(), backoff=app.backoff)))
    return out


def test_completing_and_claiming_together_writes_each_asset_once_and_right(app: Creep) -> None:
    """task_complete_and_claim settles leases and takes them again in one transaction: the
    freed capacity is leased again at once, and the asset rows end as the leases say."""
    made = app.import_assets([ip(i, max_concurrency=2) for i in range(3)])
    versions = {a.asset_id: a.version for a in made}
    tasks = [app.submit(task_type="USE", resource_hints=[NET]) for _ in range(14)]
    store, now = app.store, app.clock.now
    claimed = store.task_claim("w", ["USE"], 10, now(), 30)
    assert len(claimed) == 6  # the pool: 3 assets x 2
    rounds = 0
    while claimed:
        first = claimed[:4]  # complete some of the holders, keep the others running
        _, fresh = store.task_complete_and_claim(
            _succeed_all(app, first), "w", ["USE"], 10, now(), 30)
        assert len(fresh) == 4  # exactly what was freed is leased again
        claimed = [*claimed[4:], *fresh]
        rounds += 1
        if rounds == 2:
            break
    _, fresh = store.task_complete_and_claim(_succeed_all(app, claimed), "w", ["USE"], 10,
                                             now(), 30)
    assert len(fresh) == 0 or all(c.task.status is TaskStatus.RUNNING for c in fresh)
    _, rest = store.task_complete_and_claim(_succeed_all(app, fresh), "w", ["USE"], 10, now(), 30)
    assert rest == []
    assert all(app.get_task(t.task_id).status is TaskStatus.SUCCESS for t in tasks)
    for a in app.list_assets():
        assert a.current_concurrency == 0 and a.status is AssetStatus.READY
        assert a.version > versions[a.asset_id]
        assert a.health_score == 100
        kinds = [e.event_type for e in app.asset_events(asset_id=a.asset_id)]
        # per lease: ALLOCATED, then TASK_SUCCESS and RELEASED; never two leases too many
        held = 0
        for kind in kinds:
            held += {"ALLOCATED": 1, "RELEASED": -1}.get(kind, 0)
            assert 0 <= held <= 2
        assert held == 0
    leases = app.list_leases(limit=100)
    assert len(leases) == 14 and {x.status for x in leases} == {LeaseStatus.RELEASED}


def test_timelines_span_priorities_and_claimed_tasks_decode_whole(app: Creep) -> None:
    """A correlation_id's events are found whatever the priorities of the tasks behind them
    (also after a priority changed), and a leased task's ctx.task is the whole stored row."""
    app.import_assets([ip(1), ip(2), ip(3)])
    seen: dict[str, Any] = {}

    @app.handler("E2E")
    def run(ctx: TaskContext) -> None:
        seen[ctx.task.task_id] = (ctx.task.priority, ctx.task.lease_ids, ctx.task.tags,
                                  ctx.task.correlation_id, ctx.lease_ids)

    high = app.submit(task_type="E2E", priority=90, tags=["hi"],
                      correlation_id="corr-span", resource_hints=[NET])
    low = app.submit(task_type="E2E", priority=3,
                     correlation_id="corr-span", resource_hints=[NET])
    own = app.submit(task_type="E2E", priority=55, resource_hints=[NET])
    drain(app)
    for t in (high, low, own):
        assert app.get_task(t.task_id).status is TaskStatus.SUCCESS
    leases = {t.task_id: [x.lease_id for x in app.list_leases(task_id=t.task_id)]
              for t in (high, low, own)}
    assert seen[high.task_id] == (90, leases[high.task_id], ["hi"], "corr-span",
                                  leases[high.task_id])
    assert seen[own.task_id][3] == own.task_id and len(leases[own.task_id]) == 1
    app.update_task(low.task_id, app.get_task(low.task_id).task_version, priority=77)

    kinds = ["ALLOCATED", "TASK_SUCCESS", "RELEASED"]
    timeline = app.asset_timeline("corr-span")
    assert sorted((e.task_id, e.event_type) for e in timeline) == sorted(
        (t.task_id, k) for t in (high, low) for k in kinds)
    assert [e.occurred_at for e in timeline] == sorted(e.occurred_at for e in timeline)
    for t in (low, own):
        mine = app.asset_events(task_id=t.task_id)
        assert sorted(e.event_type for e in mine) == sorted(kinds)
        assert {e.lease_id for e in mine} == set(leases[t.task_id])
    assert [e.task_id for e in app.asset_timeline(own.task_id)] == [own.task_id] * 3


def test_one_claims_tasks_settle_each_by_its_own_outcome(app: Creep, clock: FrozenClock) -> None:
    """Tasks handed out by one claim (one claim token) and completed in one batch: each
    lease gets its own task's health effect and events."""
    from creep.domain.outcomes import Outcome, OutcomeKind, resolve
    from creep.ports import Completion

    a, b = app.import_assets([ip(1, health_score=80), ip(2, health_score=80)])
    good = app.submit(task_type="USE", priority=9, resource_hints=[NET])
    bad = app.submit(task_type="USE", priority=1, resource_hints=[NET])
    claimed = app.store.task_claim("w1", ["USE"], 10, clock.now(), 60.0)
    assert [c.task_id for c in claimed] == [good.task_id, bad.task_id]
    assert len({c.claim_token for c in claimed}) == 1
    outcomes = [
        Outcome(good.task_id, claimed[0].claim_token, OutcomeKind.SUCCEEDED, result=None),
        Outcome(bad.task_id, claimed[1].claim_token, OutcomeKind.FAILED, code="HARD",
                message="nope"),
    ]
    app.store.task_complete_many(
        [Completion(o, resolve(o, attempt=1, max_attempts=1, now=clock.now(),
                               backoff=app.backoff)) for o in outcomes],
        clock.now(),
    )
    assert app.get_task(good.task_id).status is TaskStatus.SUCCESS
    assert app.get_task(bad.task_id).status is TaskStatus.FAILED
    for task, effect, health in ((good, "TASK_SUCCESS", 81), (bad, "TASK_FAIL", 75)):
        lease = app.list_leases(task_id=task.task_id)[0]
        assert lease.status is LeaseStatus.RELEASED
        assert app.get_asset(lease.asset_id).health_score == health
        mine = app.asset_events(task_id=task.task_id)
        assert sorted(e.event_type for e in mine) == sorted(["ALLOCATED", effect, "RELEASED"])
        assert {(e.task_id, e.lease_id, e.asset_id) for e in mine} == {
            (task.task_id, lease.lease_id, lease.asset_id)}
    assert {a.asset_id, b.asset_id} == {
        x.asset_id for t in (good, bad) for x in app.list_leases(task_id=t.task_id)}


def test_a_retried_tasks_earlier_claim_is_not_settled_again(
    app: Creep, clock: FrozenClock
) -> None:
    """One claim (token T1) hands out A and B; A retries, is claimed again (T2) and finishes
    in the same batch as B (T1). The leases are read by ids and tokens, so A's released T1
    lease matches too: it must be left alone (no second effect, no error), and A's T2 lease
    and B's T1 lease settle by their own outcomes."""
    from creep.domain.outcomes import Outcome, OutcomeKind, resolve
    from creep.ports import Completion

    def done(o: Outcome, attempt: int, max_attempts: int) -> Completion:
        return Completion(o, resolve(o, attempt=attempt, max_attempts=max_attempts,
                                     now=clock.now(), backoff=app.backoff))

    app.import_assets([ip(1, health_score=80), ip(2, health_score=80), ip(3, health_score=80)])
    a = app.submit(task_type="USE", priority=9, resource_hints=[NET])
    b = app.submit(task_type="USE", priority=1, resource_hints=[NET])
    first = app.store.task_claim("w1", ["USE"], 10, clock.now(), 60.0)
    assert [c.task_id for c in first] == [a.task_id, b.task_id]
    t1 = first[0].claim_token
    again = Outcome(a.task_id, t1, OutcomeKind.RETRY, message="again", retry_delay=0)
    app.store.task_complete_many([done(again, 1, 3)], clock.now())
    (old,) = app.list_leases(task_id=a.task_id)
    events_of_old = len(app.asset_events(asset_id=old.asset_id))
    second = app.store.task_claim("w1", ["USE"], 10, clock.now(), 60.0)
    assert [c.task_id for c in second] == [a.task_id]
    finished = [Outcome(a.task_id, second[0].claim_token, OutcomeKind.SUCCEEDED, result=None),
                Outcome(b.task_id, t1, OutcomeKind.FAILED, code="HARD", message="nope")]
    applied = app.store.task_complete_many(
        [done(finished[0], 2, 3), done(finished[1], 1, 1)], clock.now())
    assert sorted(applied) == sorted([a.task_id, b.task_id])
    assert app.get_task(a.task_id).status is TaskStatus.SUCCESS
    assert app.get_task(b.task_id).status is TaskStatus.FAILED
    leases = {x.lease_id: x for x in app.list_leases(limit=10)}
    assert all(x.status is LeaseStatus.RELEASED for x in leases.values()) and len(leases) == 3
    new = next(x for x in app.list_leases(task_id=a.task_id) if x.lease_id != old.lease_id)
    (b_lease,) = app.list_leases(task_id=b.task_id)
    if old.asset_id not in (new.asset_id, b_lease.asset_id):
        # The old lease's asset saw nothing after the retry's release.
        assert len(app.asset_events(asset_id=old.asset_id)) == events_of_old
    effects = {e.lease_id: e.event_type for e in app.asset_events(task_id=a.task_id)
               if e.event_type.startswith("TASK_")}
    assert effects[new.lease_id] == "TASK_SUCCESS"
    assert [e.event_type for e in app.asset_events(task_id=b.task_id)
            if e.event_type.startswith("TASK_")] == ["TASK_FAIL"]
    assert sum(1 for e in app.asset_events(task_id=a.task_id)
               if e.lease_id == old.lease_id and e.event_type == "TASK_SUCCESS") == 0
