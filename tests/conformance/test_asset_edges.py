"""Edges of the leased claim and of auto-ban: a claim that pages over a queue changing under
it, candidate loading past its bound, several failures settled in one transaction, and the
pool's concurrency after retries, timeouts, bans and kept leases."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import Any

import pytest

from creep import Creep, FrozenClock, Retry, TaskContext, TaskStatus
from creep.domain.asset import AssetStatus
from creep.domain.lease import LeaseStatus
from creep.storage.asset_base import CANDIDATES_PER_KIND

NET = {"sku_category": "RAW_NET", "sku_code": "ip.*"}
FUND = {"sku_category": "RAW_FUND"}


def concurrency_follows_active_leases(app: Creep) -> None:
    for a in app.list_assets():
        active = app.list_leases(asset_id=a.asset_id, status="ACTIVE")
        assert a.current_concurrency == len(active), (a.asset_id, a.status)


def test_the_cheapest_asset_past_the_candidate_bound_is_found_for_a_budget(app: Creep) -> None:
    # More equally healthy assets than one claim loads by preference, the only one within
    # the budget last by asset_id: the fallback to the cheapest set must still see it.
    dear = [{"sku_category": "RAW_NET", "sku_code": f"ip.{i}", "cost_per_lease": "1.00",
             "asset_id": str(uuid.UUID(int=i + 1))} for i in range(CANDIDATES_PER_KIND)]
    cheap = {"sku_category": "RAW_NET", "sku_code": "ip.cheap", "cost_per_lease": "0.10",
             "asset_id": str(uuid.UUID(int=10**6))}
    app.import_assets([*dear, cheap])
    seen: list[str] = []

    @app.handler("USE")
    async def use(ctx: TaskContext) -> None:
        seen.extend(x.asset_id for x in await ctx.leases())

    t = app.submit(task_type="USE", max_total_cost="0.50", resource_hints=[NET])
    app.run_worker(burst=True, install_signals=False, concurrency=4)
    done = app.get_task(t.task_id)
    assert (done.status, done.result_code) == (TaskStatus.SUCCESS, "OK"), done.result_message
    assert seen == [cheap["asset_id"]]
    assert [e.amount for e in app.ledger_entries(task_id=t.task_id)] == [Decimal("0.10")]


def test_failures_settled_together_ban_on_the_one_that_reached_the_count(
    app: Creep, clock: FrozenClock
) -> None:
    app.set_ban_policy("RAW_NET", max_failures=2, window_seconds=60)
    a = app.create_asset(sku_category="RAW_NET", sku_code="ip.1", max_concurrency=2)
    first = app.submit(task_type="USE", resource_hints=[NET], timeout_ms=1000)
    second = app.submit(task_type="USE", resource_hints=[NET], timeout_ms=1000)
    claimed = app.store.task_claim("w1", ["USE"], 10, clock.now(), 300.0)
    assert {c.task.task_id for c in claimed} == {first.task_id, second.task_id}
    clock.advance(120)  # past both deadlines: one sweep times both out, in one transaction
    assert app.maintain().timed_out == 2
    assert app.get_asset(a.asset_id).status is AssetStatus.BANNED
    events = app.asset_events(asset_id=a.asset_id)
    fails = [e for e in events if e.event_type == "TASK_TIMEOUT"]
    [ban] = [e for e in events if e.event_type == "ASSET_BANNED"]
    assert len(fails) == 2
    assert ban.causation_id == fails[-1].event_id
    assert ban.context["fail_count_window"] == 2


def test_concurrency_follows_active_leases_through_retries_timeouts_bans_and_kept_leases(
    app: Creep,
) -> None:
    app.import_assets(
        [{"sku_category": "RAW_NET", "sku_code": f"ip.{i}", "max_concurrency": 3,
          "cost_per_lease": "0.5"} for i in range(3)]
        + [{"sku_category": "RAW_FUND", "sku_code": f"c.{i}", "max_concurrency": 2}
           for i in range(2)])
    runs = {"retry": 0}

    @app.handler("RETRY")
    async def retry(ctx: TaskContext) -> None:
        runs["retry"] += 1
        if runs["retry"] % 2:
            raise Retry(delay=0)

    @app.handler("SLOW")
    async def slow(ctx: TaskContext) -> None:
        await asyncio.sleep(5)

    @app.handler("KEEP")
    async def keep(ctx: TaskContext) -> None:
        return None

    @app.handler("BAN")
    async def ban(ctx: TaskContext) -> None:
        app.ban_asset((await ctx.leases())[0].asset_id)
        await ctx.heartbeat()
        await asyncio.sleep(0.2)

    app.submit_many([{"task_type": "RETRY", "resource_hints": [NET, FUND], "max_total_cost": "3"}
                     for _ in range(4)])
    app.submit_many([{"task_type": "SLOW", "resource_hints": [NET], "timeout_ms": 100,
                      "constraints": {"max_retries": 0}} for _ in range(2)])
    kept = app.submit(task_type="KEEP", resource_hints=[{**NET, "min_count": 2}],
                      constraints={"keep_leases": True})
    app.submit(task_type="BAN", resource_hints=[NET, FUND], constraints={"max_retries": 0})
    app.run_worker(burst=True, install_signals=False, concurrency=4)
    concurrency_follows_active_leases(app)
    assert app.list_assets(status="BANNED")
    for x in app.list_assets(status="BANNED"):
        app.unban_asset(x.asset_id)
    concurrency_follows_active_leases(app)
    held = [x for x in app.list_leases(task_id=kept.task_id) if x.status is LeaseStatus.ACTIVE]
    assert held  # (the ban may have revoked one of the two)
    for lease in held:
        app.release_lease(lease.lease_id)
    concurrency_follows_active_leases(app)
    assert not app.list_leases(status="ACTIVE")


@pytest.fixture
def two_clients(pg_schemas: Callable[[], str]) -> Iterator[tuple[Creep, Creep, FrozenClock]]:
    url, clock = pg_schemas(), FrozenClock()
    app, other = Creep(url, clock=clock), Creep(url, clock=clock)
    yield app, other, clock
    other.close()
    app.close()


def test_a_task_read_again_on_a_later_page_is_leased_and_charged_once(
    two_clients: tuple[Creep, Creep, FrozenClock], monkeypatch: pytest.MonkeyPatch,
) -> None:
    """PostgreSQL reads each page of hinted tasks in a new snapshot: a submit committed
    between two pages shifts the window back over a task the claim already matched."""
    app, other, clock = two_clients
    [asset] = app.import_assets([{"sku_category": "RAW_NET", "sku_code": "ip.b",
                                  "max_concurrency": 5, "cost_per_lease": "1.00"}])
    # A page of tasks nothing can serve, then the one that can: it is on the second page.
    app.submit_many([{"task_type": "USE", "priority": 50, "resource_hints": [FUND]}
                     for _ in range(31)])
    target = app.submit(task_type="USE", priority=40, resource_hints=[NET],
                        max_total_cost="1.00")
    store: Any = app.store
    load = store._load_candidates
    pages: list[int] = []

    def another_client_submits_after_the_first_page(*args: Any, **kwargs: Any) -> None:
        load(*args, **kwargs)
        if not pages:
            other.submit(task_type="USE", priority=90, resource_hints=[FUND])
        pages.append(1)

    monkeypatch.setattr(store, "_load_candidates", another_client_submits_after_the_first_page)
    claimed = store.task_claim("w1", ["USE"], 2, clock.now(), 30.0)
    monkeypatch.undo()
    assert len(pages) == 2  # the target ends the first page and, pushed back, starts the next
    assert [c.task.task_id for c in claimed] == [target.task_id]
    leases = app.list_leases(task_id=target.task_id)
    assert [x.status for x in leases] == [LeaseStatus.ACTIVE]
    assert [e.amount for e in app.ledger_entries(task_id=target.task_id)] == [Decimal("1.00")]
    assert app.get_asset(asset.asset_id).current_concurrency == 1
