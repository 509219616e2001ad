"""Assets, hinted claims and leases under load, and bulk asset errors (through the public
Python API): claim order across hinted and plain tasks, the hinted scan bound, item names."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from creep import Creep, FrozenClock, IdTaken, TaskContext, TaskStatus, ValidationError


@pytest.fixture
def ran() -> list[str]:
    """The task ids the USE handler ran, in order."""
    return []


@pytest.fixture
def app(db_url: str, clock: FrozenClock, ran: list[str]) -> Iterator[Creep]:
    creep_app = Creep(db_url, clock=clock)

    @creep_app.handler("USE")
    async def use(ctx: TaskContext) -> None:
        ran.append(ctx.task_id)

    yield creep_app
    creep_app.close()


N_BLOCKED = 100


def hint(code: str) -> list[dict[str, Any]]:
    return [{"sku_category": "RAW_NET", "sku_code": code, "min_count": 1}]


def test_runnable_hinted_task_behind_100_blocked_ones_is_claimed(
    app: Creep, clock: FrozenClock
) -> None:
    """README: blocked hinted tasks are passed over, up to 2,048 looked at per claim. The
    claim stops paging after the second page of tasks whose kind has no free asset, so a
    runnable task 101st in line is never claimed (and later fails NO_RESOURCE)."""
    app.import_assets([{"sku_category": "RAW_NET", "sku_code": "ip.free.1"}])
    app.submit_many([{"task_type": "USE", "resource_hints": hint("ip.missing.1")}
                     for _ in range(N_BLOCKED)])
    clock.advance(1)
    runnable = app.submit(task_type="USE", resource_hints=hint("ip.free.1"))
    app.run_worker(burst=True, install_signals=False, concurrency=4)
    assert app.get_task(runnable.task_id).status is TaskStatus.SUCCESS


def test_a_higher_priority_plain_task_is_claimed_before_a_lower_priority_hinted_one(
    app: Creep, clock: FrozenClock, ran: list[str]
) -> None:
    """Claims go in (priority desc, created_at) order (README Workers, PRODUCT.md §2). A claim
    serves every matchable hinted task before any plain one, so a one-slot worker runs a
    priority-10 hinted task ahead of a priority-90 plain task queued before it."""
    app.import_assets([{"sku_category": "RAW_NET", "sku_code": "ip.free.1"}])
    urgent = app.submit(task_type="USE", priority=90)
    clock.advance(1)
    low = app.submit(task_type="USE", priority=10, resource_hints=hint("ip.free.1"))
    app.run_worker(burst=True, install_signals=False, concurrency=1)
    assert ran == [urgent.task_id, low.task_id]


def test_bulk_update_errors_name_the_item(app: Creep) -> None:
    """import_assets names each error by its item (`assets[1].max_concurrency`) and
    update_assets names a repeated id `items[1].asset_id`, but update_assets reports a bad
    change of its second item as a bare `max_concurrency`: the caller cannot tell which item."""
    a, b = app.import_assets([{"sku_category": "RAW_NET", "sku_code": "ip.1"},
                              {"sku_category": "RAW_NET", "sku_code": "ip.2"}])
    with pytest.raises(ValidationError) as exc:
        app.update_assets([(a.asset_id, 1, {"max_concurrency": 3}),
                           (b.asset_id, 1, {"max_concurrency": 0})])
    assert [f for f, _ in exc.value.errors] == ["items[1].max_concurrency"]
    assert app.get_asset(a.asset_id).max_concurrency == 1  # nothing written


def test_import_of_an_existing_asset_id_names_the_item(app: Creep) -> None:
    """import_assets names every other error by item (`assets[i].field`; the REST import
    turns this one into `[i].asset_id` for that reason), but an asset_id that already exists
    came back as a bare `asset_id`. (It is an IdTaken now: another asset under that id.)"""
    taken = app.create_asset(sku_category="RAW_NET", sku_code="ip.1")
    with pytest.raises(IdTaken) as exc:
        app.import_assets([{"sku_category": "RAW_NET", "sku_code": "ip.2"},
                           {"sku_category": "RAW_NET", "sku_code": "ip.3",
                            "asset_id": taken.asset_id}])
    assert [f for f, _ in exc.value.errors] == ["assets[1].asset_id"]
    assert len(app.list_assets()) == 1  # nothing written


def test_lease_and_asset_event_listings_check_their_limit(app: Creep) -> None:
    """list_assets and ledger_entries refuse limit=-1 with a ValidationError naming `limit`;
    list_leases and asset_events pass it to SQL unchecked: SQLite returns every row (LIMIT -1
    is no limit), PostgreSQL raises a StorageError (LIMIT must not be negative)."""
    asset = app.create_asset(sku_category="RAW_NET", sku_code="ip.1")
    with pytest.raises(ValidationError) as exc:
        app.list_leases(limit=-1)
    assert [f for f, _ in exc.value.errors] == ["limit"]
    with pytest.raises(ValidationError) as exc:
        app.asset_events(asset_id=asset.asset_id, limit=-1)
    assert [f for f, _ in exc.value.errors] == ["limit"]
