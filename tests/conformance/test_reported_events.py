"""Asset events reported by handlers (ctx.report_event) and from outside a task
(report_asset_event): what the control plane accepts of them and does because of them. On
every backend, through the public API."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from creep import Creep, FrozenClock, TaskContext, TaskStatus, ValidationError

NET = {"sku_category": "RAW_NET", "sku_code": "ip.residential.uk.*"}
IP = {"sku_category": "RAW_NET", "sku_code": "ip.residential.uk.1"}


@pytest.fixture
def clock() -> FrozenClock:
    return FrozenClock()


@pytest.fixture
def app(db_url: str, clock: FrozenClock) -> Iterator[Creep]:
    creep_app = Creep(db_url, clock=clock)
    yield creep_app
    creep_app.close()


# -- occurred_at ------------------------------------------------------------------------------


def test_an_occurred_at_in_the_future_is_refused_past_the_allowed_skew(
    app: Creep, clock: FrozenClock
) -> None:
    asset = app.create_asset(**IP)
    now = clock.now()
    for when in (datetime(2100, 1, 1, tzinfo=UTC), now + timedelta(minutes=5, seconds=1)):
        with pytest.raises(ValidationError) as err:
            app.report_asset_event(asset_id=asset.asset_id, event_type="PROBE", occurred_at=when)
        assert [f for f, _ in err.value.errors] == ["occurred_at"]
        assert "300 seconds" in err.value.errors[0][1]
    assert [e.event_type for e in app.asset_events(asset_id=asset.asset_id)] == ["IMPORTED"]
    # Within the skew (a reporter's clock a little ahead), and any time in the past, is taken.
    for when in (now + timedelta(minutes=5), now - timedelta(days=400)):
        event = app.report_asset_event(asset_id=asset.asset_id, event_type="PROBE",
                                       occurred_at=when)
        assert event.occurred_at == when


def test_a_handler_reporting_an_event_from_the_future_is_refused(app: Creep) -> None:
    app.create_asset(**IP)
    raised: list[list[str]] = []

    @app.handler("PROBE")
    async def probe(ctx: TaskContext) -> None:
        try:
            await ctx.report_event("HTTP_PROBE_FAIL",
                                   occurred_at=datetime(2100, 1, 1, tzinfo=UTC))
        except ValidationError as exc:
            raised.append([f for f, _ in exc.errors])

    t = app.submit(task_type="PROBE", resource_hints=[NET])
    app.run_worker(burst=True, install_signals=False)
    assert raised == [["occurred_at"]]
    assert app.get_task(t.task_id).status is TaskStatus.SUCCESS
    assert "HTTP_PROBE_FAIL" not in [e.event_type for e in app.asset_events(task_id=t.task_id)]
