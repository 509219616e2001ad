"""Edges of the asset pool's management surface (both backends): unban and what it resets,
status changes an operator may not make, and updates that change nothing or name a version
that is not one."""

from __future__ import annotations

from typing import Any

import pytest

from creep import (
    ConflictError,
    Creep,
    FrozenClock,
    IllegalTransition,
    NotFound,
    ValidationError,
    VersionConflict,
)

NET = {"sku_category": "RAW_NET"}


def asset(app: Creep, i: int, **extra: Any) -> str:
    return app.create_asset(**NET, sku_code=f"ip.{i}", **extra).asset_id


def fail(app: Creep, asset_id: str) -> None:
    app.report_asset_event(asset_id=asset_id, event_type="HTTP_PROBE_FAIL")


def test_failures_after_an_unban_of_the_same_instant_count_to_the_next_ban(
    app: Creep, clock: FrozenClock
) -> None:
    """The failure window counts from the last UNBANNED on; failures written after it at the
    same instant (a frozen clock here; a provider's callback stamped with the unban's instant)
    are after it, and ban again; those written before it stay forgotten."""
    app.set_ban_policy("RAW_NET", max_failures=2, window_seconds=60)
    a = asset(app, 1)
    fail(app, a)
    fail(app, a)
    assert app.get_asset(a).status == "BANNED"
    app.unban_asset(a)
    fail(app, a)  # one failure after the unban: not a ban (the two before do not count)
    assert app.get_asset(a).status == "READY"
    fail(app, a)
    assert app.get_asset(a).status == "BANNED"
    banned = app.asset_events(asset_id=a, event_type="ASSET_BANNED")
    assert len(banned) == 2 and banned[1].context["fail_count_window"] == 2


def test_unban_refuses_an_asset_that_is_not_banned_and_changes_nothing(
    app: Creep, clock: FrozenClock
) -> None:
    """unban is BANNED -> READY only: it does not activate a NEW asset nor end a cooldown
    early (each a legal transition by another name, which wrote an UNBANNED audit)."""
    new = asset(app, 1, status="NEW")
    cooling = asset(app, 2, cooldown_seconds=60)
    app.update_asset(cooling, 1, status="COOLING")
    for asset_id, status in ((new, "NEW"), (cooling, "COOLING")):
        before = app.get_asset(asset_id)
        with pytest.raises(ConflictError, match=f"is {status}, not BANNED"):
            app.unban_asset(asset_id)
        assert app.get_asset(asset_id) == before
    assert [e.event_type for e in app.asset_events(asset_id=new)] == ["IMPORTED"]
    assert app.update_asset(new, 1, status="READY").status == "READY"  # how NEW is activated



def test_an_update_that_changes_nothing_writes_nothing(app: Creep) -> None:
    """As update_task: no changes is a no-op (the version still checked), not a new version
    with no UPDATED event to say why."""
    a = asset(app, 1)
    b = asset(app, 2)
    same = app.update_asset(a, 1)
    assert same.version == 1 and app.get_asset(a) == same
    with pytest.raises(VersionConflict):
        app.update_asset(a, 2)
    both = app.update_assets([(a, 1, {}), (b, 1, {"health_score": 50})])
    assert [x.version for x in both] == [1, 2]
    assert app.get_asset(a) == same and app.get_asset(b).health_score == 50
    assert [e.event_type for e in app.asset_events(asset_id=a)] == ["IMPORTED"]


def test_an_expected_version_that_is_not_a_version_is_a_validation_error(app: Creep) -> None:
    """A string or a bool is a ValidationError naming expected_version, not a VersionConflict
    against itself ("version 2 is stale (current version is 2)")."""
    a = asset(app, 1)
    for bad in ("1", True, 0):
        with pytest.raises(ValidationError) as exc:
            app.update_asset(a, bad, health_score=1)  # type: ignore[arg-type]
        assert [f for f, _ in exc.value.errors] == ["expected_version"]
    with pytest.raises(ValidationError) as many:
        app.update_assets([(a, 1, {"health_score": 2}), (a, "1", {})])  # type: ignore[list-item]
    assert [f for f, _ in many.value.errors] == ["items[1].expected_version"]
    assert app.get_asset(a).version == 1


def test_listing_by_a_status_that_does_not_exist_is_a_validation_error(app: Creep) -> None:
    """As over REST (422): a misspelt status ('ready', 'BOGUS') is not an empty pool."""
    asset(app, 1)
    for bad in ("ready", "BOGUS"):
        with pytest.raises(ValidationError) as exc:
            app.list_assets(status=bad)
        assert [f for f, _ in exc.value.errors] == ["status"]
    assert len(app.list_assets(status="READY")) == 1


def test_max_concurrency_is_not_lowered_below_the_active_leases(app: Creep) -> None:
    """Lowering max_concurrency below current_concurrency is refused (the active leases are
    kept; lower it once they end); down to it is allowed, and no new lease then fits."""
    a = asset(app, 1, max_concurrency=3)
    app.handler("HOLD")(lambda ctx: None)
    hint = [{"sku_category": "RAW_NET", "sku_code": "ip.1"}]
    for _ in range(2):
        app.submit(task_type="HOLD", resource_hints=hint, constraints={"keep_leases": True})
    app.run_worker(burst=True, install_signals=False)
    held = app.get_asset(a)
    assert held.current_concurrency == 2
    with pytest.raises(ValidationError) as exc:
        app.update_assets([(a, held.version, {"max_concurrency": 1})])
    assert [f for f, _ in exc.value.errors] == ["items[0].max_concurrency"]
    assert app.get_asset(a) == held
    assert app.update_asset(a, held.version, max_concurrency=2).max_concurrency == 2
    waiting = app.submit(task_type="HOLD", resource_hints=hint)
    app.run_worker(burst=True, install_signals=False)
    assert app.get_task(waiting.task_id).status == "QUEUED"
    assert len(app.list_leases(asset_id=a, status="ACTIVE")) == 2


def test_a_sold_or_archived_asset_keeps_its_fields(app: Creep) -> None:
    """SOLD and ARCHIVED are final: a field change is a ConflictError naming the status and
    writes nothing (a SOLD asset may still be archived, by a status change alone). A change
    made in the same call as the sale is made before it, and stands."""
    sold = asset(app, 1)
    archived = asset(app, 2)
    sold_v = app.update_asset(sold, 1, health_score=40, status="SOLD").version
    assert app.get_asset(sold).health_score == 40
    archived_v = app.archive_asset(archived).version
    for asset_id, version, status in ((sold, sold_v, "SOLD"), (archived, archived_v,
                                                                "ARCHIVED")):
        before = app.get_asset(asset_id)
        events = app.asset_events(asset_id=asset_id)
        for changes in ({"health_score": 1}, {"attributes": {"buyer": "x"}},
                        {"max_concurrency": 5, "cost_per_lease": "1"}):
            with pytest.raises(ConflictError, match=f"is {status}") as exc:
                app.update_asset(asset_id, version, **changes)
            assert asset_id in str(exc.value)
        with pytest.raises(ConflictError, match=f"is {status}"):
            app.update_assets([(asset(app, 10 + version), 1, {"health_score": 3}),
                               (asset_id, version, {"env": "x"})])
        assert app.get_asset(asset_id) == before
        assert app.asset_events(asset_id=asset_id) == events
        assert app.update_asset(asset_id, version) == before  # no change: still a no-op
    with pytest.raises(ConflictError, match="is SOLD"):
        app.update_asset(sold, sold_v, status="ARCHIVED", health_score=2)
    assert app.update_asset(sold, sold_v, status="ARCHIVED").status == "ARCHIVED"


def test_a_ban_policy_needs_a_tenant_and_a_category_as_an_asset_does(app: Creep) -> None:
    """tenant_id and sku_category are checked as an asset's are: an empty or blank one, or
    one longer than an asset's may be, is a ValidationError naming it."""
    for kwargs, field in (({"tenant_id": ""}, "tenant_id"), ({"tenant_id": "  "}, "tenant_id"),
                          ({"tenant_id": "t" * 201}, "tenant_id"),
                          ({"tenant_id": None}, "tenant_id")):
        with pytest.raises(ValidationError) as exc:
            app.set_ban_policy("RAW_NET", max_failures=2, window_seconds=60, **kwargs)
        assert [f for f, _ in exc.value.errors] == [field], kwargs
    for cat in (" ", "c" * 201):
        with pytest.raises(ValidationError) as exc:
            app.set_ban_policy(cat, max_failures=2, window_seconds=60)
        assert [f for f, _ in exc.value.errors] == ["sku_category"], cat
        with pytest.raises(ValidationError):
            app.create_asset(sku_category=cat, sku_code="ip.1")  # the same rule
    assert app.get_ban_policy("RAW_NET", tenant_id="") is None
    assert app.get_ban_policy(" ") is None
    ok = app.set_ban_policy("RAW_NET", max_failures=2, window_seconds=60, tenant_id="t1")
    assert app.get_ban_policy("RAW_NET", tenant_id="t1") == ok


def test_a_code_pattern_needs_a_prefix_in_listings_and_hints_alike(app: Creep) -> None:
    """`prefix.*` matches the codes that start with `prefix.`; a pattern with no prefix
    ('.*', which read literally matches only codes starting with '.') or a '*' elsewhere is a
    ValidationError naming sku_code, in list_assets as in a task's resource_hints (which
    would otherwise wait for an asset that can never match). No sku_code matches every code."""
    a = asset(app, 1)
    for bad in (".*", "*", "ip*", "ip.*.*"):
        with pytest.raises(ValidationError) as exc:
            app.list_assets(sku_code=bad)
        assert [f for f, _ in exc.value.errors] == ["sku_code"], bad
        with pytest.raises(ValidationError) as exc:
            app.submit(task_type="T", resource_hints=[{**NET, "sku_code": bad}])
        assert [f for f, _ in exc.value.errors] == ["resource_hints[0].sku_code"], bad
    assert [x.asset_id for x in app.list_assets(sku_code="ip.*")] == [a]
    assert [x.asset_id for x in app.list_assets()] == [a]


def test_a_policy_change_takes_effect_at_the_next_failure(
    app: Creep, clock: FrozenClock
) -> None:
    """Documented: lowering max_failures bans no asset by itself; the next failure is counted
    against the new policy with the failures already in the window."""
    app.set_ban_policy("RAW_NET", max_failures=3, window_seconds=60)
    a = asset(app, 1)
    for _ in range(2):
        fail(app, a)
        clock.advance(1)
    app.set_ban_policy("RAW_NET", max_failures=2, window_seconds=60)
    assert app.get_asset(a).status == "READY"
    fail(app, a)
    assert app.get_asset(a).status == "BANNED"
    [banned] = app.asset_events(asset_id=a, event_type="ASSET_BANNED")
    assert banned.context["fail_count_window"] == 3
    assert banned.causation_id == app.asset_events(asset_id=a, event_type="HTTP_PROBE_FAIL")[
        -1].event_id


def test_a_refused_status_change_in_a_bulk_update_names_its_item(app: Creep) -> None:
    """As the REST bulk PATCH does: an illegal transition, a hand-set IN_USE or a field of a
    SOLD asset names items[i] and the asset, and nothing of the call is written."""
    a, b, c = asset(app, 1), asset(app, 2), asset(app, 3)
    app.sell_asset(c)
    with pytest.raises(IllegalTransition) as illegal:
        app.update_assets([(a, 1, {"health_score": 3}), (b, 1, {"status": "NEW"})])
    assert str(illegal.value).startswith(f"items[1]: asset {b}: illegal transition READY -> NEW")
    with pytest.raises(ValidationError) as in_use:
        app.update_assets([(a, 1, {"health_score": 3}), (b, 1, {"status": "IN_USE"})])
    assert [f for f, _ in in_use.value.errors] == ["items[1].status"]
    with pytest.raises(ConflictError) as final:
        app.update_assets([(a, 1, {"health_score": 3}), (c, 2, {"env": "x"})])
    assert str(final.value).startswith(f"items[1]: asset {c} is SOLD")
    assert app.get_asset(a).version == app.get_asset(b).version == 1
    with pytest.raises(IllegalTransition, match=f"asset {b}: illegal"):
        app.update_asset(b, 1, status="NEW")  # one asset: no item to name


def test_ban_policies_are_listed_by_tenant_and_deleted(app: Creep, clock: FrozenClock) -> None:
    """list_ban_policies: a tenant's by sku_category (None: every tenant's); delete stops the
    auto-ban (a banned asset stays BANNED) and is NotFound for a policy there is none of."""
    set_at = clock.now()
    app.set_ban_policy("RAW_NET", max_failures=1, window_seconds=60)
    app.set_ban_policy("GPU", max_failures=2, window_seconds=60)
    app.set_ban_policy("RAW_NET", max_failures=3, window_seconds=60, tenant_id="t1")
    listed = app.list_ban_policies()
    assert [p.sku_category for p in listed] == ["GPU", "RAW_NET"]
    assert all(p.updated_at == set_at for p in listed)
    assert [(p.tenant_id, p.sku_category) for p in app.list_ban_policies(tenant_id=None)] == [
        ("default", "GPU"), ("default", "RAW_NET"), ("t1", "RAW_NET")]
    banned, kept = asset(app, 1), asset(app, 2)
    fail(app, banned)
    assert app.get_asset(banned).status == "BANNED"
    removed = app.delete_ban_policy("RAW_NET")
    assert removed.max_failures == 1 and app.get_ban_policy("RAW_NET") is None
    fail(app, kept)
    assert app.get_asset(kept).status == "READY"
    assert app.get_asset(banned).status == "BANNED"
    assert app.get_ban_policy("RAW_NET", tenant_id="t1") is not None  # another tenant's
    with pytest.raises(NotFound):
        app.delete_ban_policy("RAW_NET")


@pytest.mark.parametrize("types", [[" "], ["X" * 101], [f"T{i}" for i in range(101)]])
def test_failure_event_types_are_event_types(app: Creep, types: list[str]) -> None:
    """A blank type, one longer than an event type may be (100), or more than 100 of them is
    a ValidationError naming failure_event_types (a longer one could never match)."""
    with pytest.raises(ValidationError) as exc:
        app.set_ban_policy("RAW_NET", max_failures=1, window_seconds=60,
                           failure_event_types=types)
    assert [f for f, _ in exc.value.errors] == ["failure_event_types"]
    assert app.get_ban_policy("RAW_NET") is None
