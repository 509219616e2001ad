"""Edges of auto-ban and the ledger: the ban's cause among failures of one instant, reported
through several nodes; ban policies set concurrently; a handler's money and asset events after
its claim was lost."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import Any

import pytest

from creep import ClaimLost, Creep, FrozenClock, TaskStatus, ValidationError
from creep.domain.errors import IdTaken
from creep.domain.ledger import BudgetExceeded

NET = {"sku_category": "RAW_NET", "sku_code": "ip.*"}


@pytest.fixture
def two_nodes(pg_schemas: Callable[[], str]) -> Iterator[tuple[Creep, Creep, FrozenClock]]:
    """Two clients of one PostgreSQL database (two API nodes, or two workers)."""
    url, clock = pg_schemas(), FrozenClock()
    app, other = Creep(url, clock=clock), Creep(url, clock=clock)
    yield app, other, clock
    other.close()
    app.close()


def asset(app: Creep, i: int, **extra: Any) -> str:
    return app.create_asset(sku_category="RAW_NET", sku_code=f"ip.{i}", **extra).asset_id


def test_the_ban_is_caused_by_the_failure_that_reached_the_count_across_nodes(
    two_nodes: tuple[Creep, Creep, FrozenClock],
) -> None:
    """Failures of one instant (a frozen clock here; provider callbacks stamped to the second
    in practice) reported through two nodes: the second one completes the window, so it is
    the ban's cause. Each node's connection fills heap pages of its own, so the table's
    physical order is not the write order: the window must be read in (occurred_at, seq)."""
    app, other, _ = two_nodes
    app.set_ban_policy("RAW_NET", max_failures=2, window_seconds=60)
    body = {"response": "x" * 1500}  # a page holds a few of these: pages fill soon
    for i in range(30):
        a = asset(app, i)
        other.report_asset_event(asset_id=a, event_type="HTTP_PROBE_FAIL", context=body)
        last = app.report_asset_event(asset_id=a, event_type="HTTP_PROBE_FAIL", context=body)
        [ban] = app.asset_events(asset_id=a, event_type="ASSET_BANNED")
        assert ban.causation_id == last.event_id, f"asset #{i}"


def test_ban_policies_set_concurrently_by_two_nodes_both_succeed(
    two_nodes: tuple[Creep, Creep, FrozenClock],
) -> None:
    """Two nodes setting one category's policy at once: each call succeeds (one of them is
    the policy after), none fails on the policy's primary key."""
    app, other, _ = two_nodes
    app.set_ban_policy("RAW_NET", max_failures=9, window_seconds=9)
    errors: list[Exception] = []
    for i in range(20):
        barrier = threading.Barrier(2)

        def set_policy(node: Creep, max_failures: int, barrier: threading.Barrier) -> None:
            barrier.wait()
            try:
                node.set_ban_policy("RAW_NET", max_failures=max_failures, window_seconds=60)
            except Exception as exc:  # any failure is the bug
                errors.append(exc)

        threads = [threading.Thread(target=set_policy, args=(node, 2 * i + n, barrier))
                   for n, node in enumerate((app, other), start=1)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == [], f"round {i}"
        policy = app.get_ban_policy("RAW_NET")
        assert policy is not None and policy.max_failures in (2 * i + 1, 2 * i + 2)
        assert policy.window_seconds == 60


def test_a_run_that_lost_its_claim_charges_and_reports_nothing(
    app: Creep, clock: FrozenClock
) -> None:
    """A handler still running after its claim expired and the rescuer took the task back
    (a stalled sync handler): its ctx.charge, ctx.earn and ctx.report_event raise ClaimLost
    and write nothing, as they do on an HTTP worker (409). Otherwise the stale run's spend
    counted against the budget of the run that holds the task next, and its failures could
    ban the asset under that run."""
    app.set_ban_policy("RAW_NET", max_failures=1, window_seconds=60)
    a = asset(app, 1)
    outcomes: list[str] = []

    @app.handler("SPEND")
    def spend(ctx: Any) -> None:
        if ctx.attempt == 1:
            clock.advance(3600)  # the claim expired long ago ...
            assert app.maintain().rescued == 1  # ... and the task went back to the queue
        for call in (lambda: ctx.charge("4"), lambda: ctx.earn("1"),
                     lambda: ctx.report_event("HTTP_PROBE_FAIL", asset_id=a)):
            try:
                call()
                outcomes.append(f"{ctx.attempt}: written")
            except ClaimLost:
                outcomes.append(f"{ctx.attempt}: lost")
            except BudgetExceeded:
                outcomes.append(f"{ctx.attempt}: over budget")

    t = app.submit(task_type="SPEND", max_total_cost="5", resource_hints=[NET])
    app.run_worker(burst=True, install_signals=False)
    clock.advance(60)  # past the retry's backoff
    app.run_worker(burst=True, install_signals=False)
    assert outcomes == ["1: lost"] * 3 + ["2: written"] * 3
    assert [(e.entry_type, e.amount) for e in app.ledger_entries(task_id=t.task_id)] == [
        ("COST", Decimal("4")), ("REVENUE", Decimal("1"))]
    fails = app.asset_events(asset_id=a, event_type="HTTP_PROBE_FAIL")
    assert [e.task_id for e in fails] == [t.task_id]
    assert fails[0].lease_id in app.get_task(t.task_id).lease_ids[-1:]


def test_a_charge_with_an_entry_id_is_recorded_once_over_every_run(
    app: Creep, clock: FrozenClock
) -> None:
    """A handler that charges under an id of its own (kept in the payload) and fails after
    the charge: its next run's same charge returns the entry the first run wrote instead of
    spending again (nor, the budget being spent, raising BudgetExceeded); another charge
    under that id raises IdTaken, writing nothing."""
    spend_id = str(uuid.uuid4())
    seen: list[str] = []

    @app.handler("SPEND")
    def spend(ctx: Any) -> None:
        entry = ctx.charge("4", description="captcha", entry_id=ctx.task.input_payload["spend"])
        seen.append(entry.entry_id)
        if ctx.attempt == 1:
            raise RuntimeError("the provider timed out after taking the money")
        with pytest.raises(IdTaken):
            ctx.charge("1", entry_id=ctx.task.input_payload["spend"])

    t = app.submit(task_type="SPEND", max_total_cost="5", input_payload={"spend": spend_id})
    app.run_worker(burst=True, install_signals=False)
    clock.advance(60)  # past the retry's backoff
    app.run_worker(burst=True, install_signals=False)
    assert app.get_task(t.task_id).status is TaskStatus.SUCCESS
    assert seen == [spend_id, spend_id]
    assert [(e.entry_id, e.amount) for e in app.ledger_entries(task_id=t.task_id)] == [
        (spend_id, Decimal("4"))]


def test_an_asset_repriced_while_a_claim_matched_it_is_not_leased_over_the_budget(
    two_nodes: tuple[Creep, Creep, FrozenClock], monkeypatch: pytest.MonkeyPatch,
) -> None:
    """PostgreSQL: a claim reads its candidates without locks and locks the picked assets
    after. An update committed in between (cost_per_lease raised, currency changed) must not
    lease the asset at a price the budget was not checked against, nor in another currency
    than the task's."""
    app, other, clock = two_nodes
    store: Any = app.store
    load = store._load_candidates

    def claim_while_another_node_updates(asset_id: str, **change: Any) -> list[Any]:
        def load_then_update(*args: Any, **kwargs: Any) -> None:
            load(*args, **kwargs)
            other.update_asset(asset_id, other.get_asset(asset_id).version, **change)

        with monkeypatch.context() as m:
            m.setattr(store, "_load_candidates", load_then_update)
            claimed: list[Any] = store.task_claim("w1", ["USE"], 1, clock.now(), 30.0)
        return claimed

    a = asset(app, 1, cost_per_lease="1.00")
    t = app.submit(task_type="USE", resource_hints=[NET], max_total_cost="1.00")
    assert claim_while_another_node_updates(a, cost_per_lease="3.00") == []
    assert app.list_leases(task_id=t.task_id) == []
    # The next claim reads the new price: over the budget, the task fails at once.
    assert store.task_claim("w1", ["USE"], 1, clock.now(), 30.0) == []
    done = app.get_task(t.task_id)
    assert (done.status, done.result_code) == (TaskStatus.FAILED, "BUDGET_EXCEEDED")
    assert app.ledger_entries(task_id=t.task_id) == []

    b = asset(app, 2, cost_per_lease="1.00")
    t = app.submit(task_type="USE", resource_hints=[NET], max_total_cost="1.00")
    assert claim_while_another_node_updates(b, currency="EUR") == []
    assert app.list_leases(task_id=t.task_id) == []
    assert app.ledger_entries(task_id=t.task_id) == []
    assert app.get_asset(b).current_concurrency == 0


def test_money_in_exponent_notation_reads_back_alike_on_both_backends(app: Creep) -> None:
    """'1E+3' is a decimal string creep accepts: the task's budget, an asset's price and a
    ledger amount read back as the digits PostgreSQL's numeric gives (SQLite showed '1E+3'),
    and the entry a write returns shows what a later read shows."""
    t = app.submit(task_type="SPEND", max_total_cost="1E+3")
    assert str(app.get_task(t.task_id).max_total_cost) == "1000"
    a = app.create_asset(sku_category="RAW_NET", sku_code="ip.1", cost_per_lease="5E-1")
    assert str(a.cost_per_lease) == str(app.get_asset(a.asset_id).cost_per_lease) == "0.5"
    entry = app.record_ledger_entry(entry_type="REVENUE", amount="2.50E+1", currency="USD",
                                    task_id=t.task_id)
    [read] = app.ledger_entries(task_id=t.task_id)
    assert str(entry.amount) == str(read.amount) == "25.0"


def test_a_handler_charges_only_the_leases_of_its_own_run(app: Creep) -> None:
    """ctx.charge(lease_id=...) checked only that the lease was the tenant's: a handler could
    book its cost against another task's lease (or name a lease and an asset it is not on).
    A lease_id must be one of this run's leases (any status, as ctx.leases() lists them), and
    an asset_id given with it the lease's asset; an asset_id alone may be any of the
    tenant's assets (a handler may pay for an asset it did not lease)."""
    a1, a2 = asset(app, 1), asset(app, 2)
    leased: dict[str, Any] = {}
    refused: dict[str, list[str]] = {}

    @app.handler("LEASED")
    async def first(ctx: Any) -> None:
        [lease] = await ctx.leases()
        leased["other"] = lease

    @app.handler("CHARGER")
    async def charger(ctx: Any) -> None:
        [mine] = await ctx.leases()
        other = leased["other"]
        unleased = a2 if mine.asset_id == a1 else a1
        for name, kwargs in (
            ("another task's lease", {"lease_id": other.lease_id}),
            ("another asset with its lease", {"lease_id": mine.lease_id,
                                              "asset_id": unleased}),
        ):
            try:
                await ctx.charge("1", **kwargs)
            except ValidationError as exc:
                refused[name] = [field for field, _ in exc.errors]
        await ctx.charge("0.5", lease_id=mine.lease_id, asset_id=mine.asset_id)
        await ctx.charge("0.25", asset_id=unleased)

    first_task = app.submit(task_type="LEASED", resource_hints=[NET])
    app.run_worker(burst=True, install_signals=False)
    assert app.get_task(first_task.task_id).status is TaskStatus.SUCCESS
    t = app.submit(task_type="CHARGER", resource_hints=[NET])
    app.run_worker(burst=True, install_signals=False)
    assert app.get_task(t.task_id).status is TaskStatus.SUCCESS
    assert refused == {"another task's lease": ["lease_id"],
                       "another asset with its lease": ["lease_id"]}
    assert [e.amount for e in app.ledger_entries(task_id=t.task_id)] == [
        Decimal("0.5"), Decimal("0.25")]
    assert app.ledger_entries(task_id=first_task.task_id) == []


def test_an_entry_naming_a_lease_but_no_task_is_the_leases_tasks(app: Creep) -> None:
    """A REFUND or ADJUSTMENT recorded for a lease (no task_id) was written tied to no task:
    in any currency, past the lease's task's max_total_cost, and missing from the task's
    summary. It is the lease's task's entry, checked as one naming the task."""
    a = asset(app, 1, cost_per_lease="1.00")
    t = app.submit(task_type="USE", resource_hints=[NET], max_total_cost="2.00",
                   project_id="p1")
    app.handler("USE")(lambda ctx: None)
    app.run_worker(burst=True, install_signals=False)
    [lease] = app.list_leases(task_id=t.task_id)
    with pytest.raises(BudgetExceeded):
        app.record_ledger_entry(entry_type="ADJUSTMENT", amount="5", currency="USD",
                                lease_id=lease.lease_id)
    with pytest.raises(ValidationError, match="currency"):
        app.record_ledger_entry(entry_type="REFUND", amount="0.40", currency="EUR",
                                lease_id=lease.lease_id, asset_id=a)
    refund = app.record_ledger_entry(entry_type="REFUND", amount="0.40", currency="USD",
                                     lease_id=lease.lease_id, asset_id=a)
    assert (refund.task_id, refund.project_id) == (t.task_id, "p1")
    [summary] = app.ledger_summary(task_id=t.task_id)
    assert (summary.cost, summary.entries) == (Decimal("0.60"), 2)
    [read] = [e for e in app.ledger_entries(task_id=t.task_id) if e.entry_type == "REFUND"]
    assert read.entry_id == refund.entry_id
