"""Edges of the asset pool's management surface (both backends): unban and what it resets,
status changes an operator may not make, and updates that change nothing or name a version
that is not one."""

from __future__ import annotations

from typing import Any

from creep import Creep, FrozenClock

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
