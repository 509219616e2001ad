"""Claim lanes on PostgreSQL (domain/claim_lanes.py, opt-in: claim_lanes=2): a worker's big
leased claims run as concurrent transactions, one per lane, and the pool's limits still hold;
a lane that fails leaves the other lanes' work committed and its own completions to write
again."""

from __future__ import annotations

import collections
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from creep import Creep, LeaseStatus, TaskContext, TaskStatus
from creep.domain.asset import AssetStatus
from creep.domain.claim_lanes import asset_lane, lane_of
from creep.domain.errors import StorageError, ValidationError
from creep.domain.outcomes import Outcome, OutcomeKind, resolve
from creep.ports import ClaimedTask, Completion, LaneFailed

HINT = [{"sku_category": "RAW_NET", "sku_code": "ip.lane.*"}]


@pytest.fixture
def pg_app(pg_schemas: Callable[[], str]) -> Iterator[Creep]:
    app = Creep(pg_schemas())

    @app.handler("USE")
    async def use(ctx: TaskContext) -> None:
        return None

    yield app
    app.close()


def _pool_and_tasks(app: Creep, assets: int, per_asset: int, tasks: int) -> None:
    app.import_assets([
        {"sku_category": "RAW_NET", "sku_code": f"ip.lane.{i}", "max_concurrency": per_asset}
        for i in range(assets)
    ])
    app.submit_many([{"task_type": "USE", "priority": i % 7, "resource_hints": HINT}
                     for i in range(tasks)])


def _succeeded(app: Creep, claimed: list[ClaimedTask]) -> list[Completion]:
    out = []
    for c in claimed:
        o = Outcome(c.task_id, c.claim_token, OutcomeKind.SUCCEEDED, result=None,
                    result_json=b"null")
        out.append(Completion(o, resolve(o, attempt=c.attempt, max_attempts=c.max_attempts,
                                         now=app.clock.now(), backoff=app.backoff)))
    return out


def _lanes_ran(app: Creep) -> bool:
    return getattr(app.store, "_lane_pool", None) is not None


def test_a_big_leased_drain_runs_in_lanes_and_keeps_every_rule(
    pg_app: Creep, caplog: pytest.LogCaptureFixture
) -> None:
    app, n = pg_app, 1500
    _pool_and_tasks(app, assets=40, per_asset=3, tasks=n)  # 120 slots for 200 handlers
    stats = app.run_worker(burst=True, install_signals=False, concurrency=200, claim_lanes=2)
    assert stats["completed"] == n and _lanes_ran(app)
    # No lane failed on the way (an over-allocation refused by the database's CHECK, a
    # deadlock): the worker would have written such a lane's work again, unseen here.
    assert not [r for r in caplog.records if r.levelname in ("WARNING", "ERROR")], [
        r.getMessage() for r in caplog.records]
    tasks = app.list_tasks(limit=n + 1)
    assert collections.Counter(t.status for t in tasks) == {TaskStatus.SUCCESS: n}
    assert {t.attempt for t in tasks} == {1}  # none ran twice
    leases = app.list_leases(limit=n + 1)
    assert len(leases) == n and {x.status for x in leases} == {LeaseStatus.RELEASED}
    # Both lanes claimed, and a lane's claims leased its own assets (the pool is uniform).
    lanes = collections.Counter(lane_of(x.claim_token) for x in leases)
    assert min(lanes[0], lanes[1]) > n // 10, lanes
    own = sum(asset_lane(x.asset_id) == lane_of(x.claim_token) for x in leases)
    assert own >= 0.85 * n, own
    for asset in app.list_assets(limit=100):
        assert asset.current_concurrency == 0 and asset.status is AssetStatus.READY
        held = 0
        for event in app.asset_events(asset_id=asset.asset_id, limit=10_000):
            held += {"ALLOCATED": 1, "RELEASED": -1}.get(event.event_type, 0)
            assert 0 <= held <= 3, "an asset held more leases than its max_concurrency"
        assert held == 0


def _claim_in_lanes(app: Creep, limit: int) -> list[ClaimedTask]:
    """A claim in lanes (no completions ride along)."""
    store: Any = app.store
    claimed: list[ClaimedTask] = store.task_complete_and_claim(
        [], "w", ["USE"], limit, app.clock.now(), 30, lanes=2)[1]
    assert _lanes_ran(app) and {lane_of(c.claim_token) for c in claimed} == {0, 1}
    return claimed


def _running_in_lanes(app: Creep, tasks: int) -> tuple[Any, list[ClaimedTask]]:
    """A pool of 20 x 10, `tasks` queued, 100 of them claimed in lanes."""
    _pool_and_tasks(app, assets=20, per_asset=10, tasks=tasks)
    return app.store, _claim_in_lanes(app, 100)


def _break_lanes(
    monkeypatch: pytest.MonkeyPatch, store: Any, lanes: set[int], error: BaseException
) -> Callable[[], None]:
    """The store's transactions of these lanes raise `error` before any SQL; returns what
    mends them."""
    lane_work = store._complete_and_claim

    def broken(*args: Any) -> Any:
        if args[-1] in lanes:
            raise error
        return lane_work(*args)

    monkeypatch.setattr(store, "_complete_and_claim", broken)
    return lambda: monkeypatch.setattr(store, "_complete_and_claim", lane_work)


def test_a_failed_lane_leaves_the_others_committed_and_names_what_to_write_again(
    pg_app: Creep, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = pg_app
    store, running = _running_in_lanes(app, 600)
    mend = _break_lanes(monkeypatch, store, {1}, StorageError("lane 1: connection lost"))
    completions = _succeeded(app, running)
    with pytest.raises(LaneFailed) as failed:
        store.task_complete_and_claim(completions, "w", ["USE"], 100, app.clock.now(), 30,
                                      lanes=2)
    unwritten = {c.outcome.task_id for c in failed.value.unwritten}
    assert unwritten == {c.task_id for c in running if lane_of(c.claim_token) == 1}
    assert failed.value.claimed and {lane_of(c.claim_token) for c in failed.value.claimed} == {0}
    for c in running:
        want = TaskStatus.RUNNING if c.task_id in unwritten else TaskStatus.SUCCESS
        assert app.get_task(c.task_id).status is want
    for c in failed.value.claimed:  # lane 0's claim committed: its tasks are the worker's
        assert app.get_task(c.task_id).status is TaskStatus.RUNNING
    # What the failed lane left is written again, as the worker's completer does.
    mend()
    assert sorted(store.task_complete_many(failed.value.unwritten, app.clock.now())) == sorted(
        unwritten)


def test_lanes_that_all_fail_raise_the_storage_error_and_a_bug_raises_as_it_is(
    pg_app: Creep, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = pg_app
    store, running = _running_in_lanes(app, 400)
    mend = _break_lanes(monkeypatch, store, {0, 1}, StorageError("down"))
    with pytest.raises(StorageError) as down:
        store.task_complete_and_claim(_succeeded(app, running), "w", ["USE"], 100,
                                      app.clock.now(), 30, lanes=2)
    assert not isinstance(down.value, LaneFailed)

    mend()
    _break_lanes(monkeypatch, store, {1}, KeyError("a bug"))
    with pytest.raises(KeyError):
        store.task_complete_and_claim(_succeeded(app, running), "w", ["USE"], 100,
                                      app.clock.now(), 30, lanes=2)


def test_a_worker_whose_lane_fails_once_finishes_every_task_once(
    pg_app: Creep, monkeypatch: pytest.MonkeyPatch
) -> None:
    app, n = pg_app, 900
    _pool_and_tasks(app, assets=30, per_asset=4, tasks=n)
    store: Any = app.store
    lane_work = store._complete_and_claim
    calls = collections.Counter()

    carried: list[int] = []

    def lane_one_fails_once(*args: Any) -> Any:
        calls[args[-1]] += 1
        if args[-1] == 1 and not carried and args[0]:  # a lane with completions to write
            carried.append(len(args[0]))
            raise StorageError("lane 1: connection lost")
        return lane_work(*args)

    monkeypatch.setattr(store, "_complete_and_claim", lane_one_fails_once)
    stats = app.run_worker(burst=True, install_signals=False, concurrency=200, claim_lanes=2)
    assert carried and calls[1] > 3, "lane 1 failed with completions, then went on"
    assert stats["completed"] == n
    tasks = app.list_tasks(limit=n + 1)
    assert collections.Counter(t.status for t in tasks) == {TaskStatus.SUCCESS: n}
    assert {t.attempt for t in tasks} == {1}
    assert {x.status for x in app.list_leases(limit=n + 1)} == {LeaseStatus.RELEASED}


def test_a_pool_too_small_for_lanes_claims_in_one_transaction(
    pg_schemas: Callable[[], str]
) -> None:
    app = Creep(pg_schemas() + "&pool_max=3")

    @app.handler("USE")
    async def use(ctx: TaskContext) -> None:
        return None

    try:
        _pool_and_tasks(app, assets=20, per_asset=5, tasks=500)
        assert app.run_worker(burst=True, install_signals=False, concurrency=200,
                              claim_lanes=2)["completed"] == 500
        assert not _lanes_ran(app)
    finally:
        app.close()


def test_lanes_are_opt_in_and_for_postgresql_only(pg_app: Creep, tmp_path: Any) -> None:
    app = pg_app
    _pool_and_tasks(app, assets=20, per_asset=5, tasks=300)
    assert app.run_worker(burst=True, install_signals=False, concurrency=200)[
        "completed"] == 300
    assert not _lanes_ran(app)  # the default: one transaction per claim
    with pytest.raises(ValidationError) as wrong:
        app.worker(claim_lanes=3)
    assert wrong.value.errors[0][0] == "claim_lanes"
    sqlite = Creep(f"sqlite:///{tmp_path}/lanes.db")
    try:
        with pytest.raises(ValidationError) as refused:
            sqlite.worker(claim_lanes=2)
        assert refused.value.errors == [
            ("claim_lanes", "needs PostgreSQL (SQLite writes one transaction at a time)")]
    finally:
        sqlite.close()


def test_a_lane_that_fails_midway_leaves_nothing_of_its_own_work(
    pg_app: Creep, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Lane 1 fails after it settled its completions and took new leases, inside its
    transaction: all of that rolls back, lane 0's work stands, and writing lane 1's
    completions again settles them exactly once."""
    app = pg_app
    store, running = _running_in_lanes(app, 600)
    claim_rows = store._claim_rows

    def lane_one_breaks_after_claiming(*args: Any, **kwargs: Any) -> Any:
        got = claim_rows(*args, **kwargs)
        if kwargs.get("lane") == 1:
            assert got[0], "lane 1 should have claimed (and leased) before failing"
            raise StorageError("lane 1: connection lost after claiming")
        return got

    monkeypatch.setattr(store, "_claim_rows", lane_one_breaks_after_claiming)
    with pytest.raises(LaneFailed) as failed:
        store.task_complete_and_claim(_succeeded(app, running), "w", ["USE"], 100,
                                      app.clock.now(), 30, lanes=2)
    monkeypatch.setattr(store, "_claim_rows", claim_rows)
    unwritten = {c.outcome.task_id for c in failed.value.unwritten}
    assert unwritten and unwritten == {c.task_id for c in running if lane_of(c.claim_token) == 1}
    active = app.list_leases(status="ACTIVE", limit=10_000)
    # Held: lane 1's unsettled tasks and lane 0's new claims; nothing of lane 1's new claim.
    holders = {x.task_id for x in active}
    assert holders == unwritten | {c.task_id for c in failed.value.claimed}
    for asset in app.list_assets(limit=100):
        assert asset.current_concurrency == sum(x.asset_id == asset.asset_id for x in active)
    store.task_complete_many(failed.value.unwritten, app.clock.now())
    for task_id in unwritten:
        assert app.get_task(task_id).status is TaskStatus.SUCCESS
        assert {x.status for x in app.list_leases(task_id=task_id)} == {LeaseStatus.RELEASED}
    active = app.list_leases(status="ACTIVE", limit=10_000)
    for asset in app.list_assets(limit=100):
        assert asset.current_concurrency == sum(x.asset_id == asset.asset_id for x in active)


def test_a_small_claim_runs_in_one_transaction_even_with_lanes_asked(
    pg_app: Creep, caplog: pytest.LogCaptureFixture
) -> None:
    app = pg_app
    _pool_and_tasks(app, assets=10, per_asset=5, tasks=200)
    assert app.run_worker(burst=True, install_signals=False, concurrency=20,
                          claim_lanes=2)["completed"] == 200
    assert not _lanes_ran(app)
    assert any("claim_lanes=2 has no effect" in r.getMessage() for r in caplog.records)
