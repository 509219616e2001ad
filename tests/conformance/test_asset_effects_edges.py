"""Edges of what tasks do to assets and budgets: a worker lost long before its deadline, NO_RESOURCE during a retry backoff, overlapping hints, the cheapest set under a budget, a lost worker after its lease was revoked. Every test runs on SQLite and on PostgreSQL (db_url)."""

from __future__ import annotations

from creep import Creep, FrozenClock, Retry, TaskContext, TaskStatus
from creep.domain.lease import LeaseStatus


def drain(app: Creep) -> None:
    app.run_worker(burst=True, install_signals=False, concurrency=4)


def event_types(app: Creep, asset_id: str) -> list[str]:
    return [e.event_type for e in app.asset_events(asset_id=asset_id)]


# -- 1. control-plane timeout of a worker that vanished long before the deadline ---------------


def test_worker_lost_before_its_deadline_is_timed_out_and_docks_assets_when_the_sweep_is_late(
    app: Creep, clock: FrozenClock
) -> None:
    """README (Workers): "A claim that expires before the deadline (plus the task's own grace)
    is retried with result_code WORKER_LOST"; (Assets): "A lost worker (claim expired) changes
    nothing". The claim here expires at +10 s, 50 s before the 60 s deadline; the leader's
    sweep only runs at +61 s (e.g. the lone worker crashed and was restarted a minute later).
    The rescuer compares the deadline with *now*, not with when the claim expired, so the
    task ends TIMEOUT (no retry) and its asset takes TASK_TIMEOUT -10 (an auto-ban failure)."""
    asset = app.create_asset(sku_category="RAW_NET", sku_code="ip.1")
    task = app.submit(task_type="USE", timeout_ms=60_000,
                      resource_hints=[{"sku_category": "RAW_NET"}])
    [claimed] = app.store.task_claim("doomed", ["USE"], 10, clock.now(), 10.0)
    assert claimed.task.task_id == task.task_id
    clock.advance(61)  # the claim expired at +10 s; the first sweep after it runs now
    app.maintain()
    got = app.get_task(task.task_id)
    assert (got.status, got.result_code) == (TaskStatus.QUEUED, "WORKER_LOST")
    assert app.get_asset(asset.asset_id).health_score == 100
    assert "TASK_TIMEOUT" not in event_types(app, asset.asset_id)


# -- 2. NO_RESOURCE while the task is only waiting out its own retry backoff ------------------


def test_no_resource_sweep_fails_a_hinted_task_still_waiting_out_its_retry_backoff(
    app: Creep, clock: FrozenClock
) -> None:
    """NO_RESOURCE means no matching asset was free before the deadline (PRODUCT.md: "No
    resource -> the task waits in QUEUED (or fails NO_RESOURCE after its timeout)"). A hinted
    task whose retry backoff is longer than its timeout_ms is failed NO_RESOURCE by the sweep
    before it is even runnable, while its asset sits READY the whole time."""
    asset = app.create_asset(sku_category="RAW_NET", sku_code="ip.1")
    runs: list[int] = []

    @app.handler("USE")
    async def use(ctx: TaskContext) -> None:
        runs.append(ctx.attempt)
        if ctx.attempt == 1:
            raise Retry(delay=10)

    task = app.submit(task_type="USE", timeout_ms=5_000,
                      resource_hints=[{"sku_category": "RAW_NET"}])
    drain(app)
    assert app.get_task(task.task_id).status is TaskStatus.QUEUED  # backing off for 10 s
    clock.advance(6)
    assert app.get_asset(asset.asset_id).status.value == "READY"  # free all along
    app.maintain_assets()
    got = app.get_task(task.task_id)
    assert got.status is TaskStatus.QUEUED, (got.result_code, got.result_message)
    clock.advance(5)  # the backoff is over
    drain(app)
    assert app.get_task(task.task_id).status is TaskStatus.SUCCESS
    assert runs == [1, 2]


# -- 3. all-or-nothing matching: overlapping hints are never matched -----------------------------


def test_a_task_whose_hints_overlap_stays_queued_though_the_pool_can_serve_it(
    app: Creep,
) -> None:
    """README: "A task takes *all* of its hints or nothing and stays QUEUED". Hints
    [ip.* , ip.x] with assets x (healthier) and z: {hint0: z, hint1: x} serves the task, but
    matching fills each hint greedily in order: hint 0 takes x, hint 1 finds nothing left, and
    the task waits (then fails NO_RESOURCE) for ever. The same hints in the other order match."""
    x = app.create_asset(sku_category="RAW_NET", sku_code="ip.x", health_score=100)
    z = app.create_asset(sku_category="RAW_NET", sku_code="ip.z", health_score=90)

    @app.handler("USE")
    async def use(ctx: TaskContext) -> None:
        return None

    wide = {"sku_category": "RAW_NET", "sku_code": "ip.*"}
    exact = {"sku_category": "RAW_NET", "sku_code": "ip.x"}
    twin = app.submit(task_type="USE", resource_hints=[exact, wide])
    drain(app)
    assert app.get_task(twin.task_id).status is TaskStatus.SUCCESS  # [ip.x, ip.*]: matched
    task = app.submit(task_type="USE", resource_hints=[wide, exact])
    drain(app)
    got = app.get_task(task.task_id)
    assert got.status is TaskStatus.SUCCESS, (got.status, got.result_code)
    assert {lease.asset_id for lease in app.list_leases(task_id=task.task_id)} == {
        x.asset_id, z.asset_id}


# -- 4. budget: the "cheapest available set" is not the cheapest -------------------------------


def test_budget_fallback_misses_the_cheapest_set_and_fails_a_task_that_fits_its_budget(
    app: Creep,
) -> None:
    """README (Budget): "when the leases a task would take (cheapest available set tried last)
    would push its cost over the budget, the lease is refused and the task ends FAILED /
    BUDGET_EXCEEDED". Hints [ip.a.* , attributes k=1]; assets x (ip.a.x, k=1, 0.10),
    z (ip.a.z, 0.20), w (ip.b.w, k=1, 0.90). {hint0: z, hint1: x} costs 0.30, exactly the
    budget. The fallback picks the cheapest asset per hint in order (hint 0 takes x, so hint 1
    must take w: 1.00) and the task is failed BUDGET_EXCEEDED at once."""
    x = app.create_asset(sku_category="RAW_NET", sku_code="ip.a.x", attributes={"k": 1},
                         cost_per_lease="0.10", health_score=100)
    z = app.create_asset(sku_category="RAW_NET", sku_code="ip.a.z", cost_per_lease="0.20",
                         health_score=90)
    app.create_asset(sku_category="RAW_NET", sku_code="ip.b.w", attributes={"k": 1},
                     cost_per_lease="0.90", health_score=100)

    @app.handler("USE")
    async def use(ctx: TaskContext) -> None:
        return None

    task = app.submit(task_type="USE", max_total_cost="0.30", resource_hints=[
        {"sku_category": "RAW_NET", "sku_code": "ip.a.*"},
        {"sku_category": "RAW_NET", "attributes": {"k": 1}},
    ])
    drain(app)
    got = app.get_task(task.task_id)
    assert (got.status, got.result_code) == (TaskStatus.SUCCESS, "OK"), got.result_message
    assert {lease.asset_id for lease in app.list_leases(task_id=task.task_id)} == {
        x.asset_id, z.asset_id}
    [summary] = app.ledger_summary(task_id=task.task_id)
    assert str(summary.cost) == "0.30"


# -- 5. a lost worker docks the health of an asset whose lease was revoked ---------------------


def test_a_lost_worker_docks_the_health_of_an_asset_whose_lease_was_revoked(
    app: Creep, clock: FrozenClock
) -> None:
    """README: "A lost worker (claim expired) changes nothing." Settling tells a lost worker
    apart only by the lease being EXPIRED; a lease the operator REVOKED (ban) before the worker
    vanished is not expired by the rescuer, so the WORKER_LOST retry writes TASK_FAIL and takes
    5 off the asset's health."""
    asset = app.create_asset(sku_category="RAW_NET", sku_code="ip.1")
    task = app.submit(task_type="USE", timeout_ms=600_000,
                      resource_hints=[{"sku_category": "RAW_NET"}])
    app.store.task_claim("doomed", ["USE"], 10, clock.now(), 10.0)
    app.ban_asset(asset.asset_id)
    assert app.list_leases(task_id=task.task_id)[0].status is LeaseStatus.REVOKED
    clock.advance(11)
    assert app.maintain().rescued == 1
    got = app.get_task(task.task_id)
    assert (got.status, got.result_code) == (TaskStatus.QUEUED, "WORKER_LOST")
    assert "TASK_FAIL" not in event_types(app, asset.asset_id)
    assert app.get_asset(asset.asset_id).health_score == 100
