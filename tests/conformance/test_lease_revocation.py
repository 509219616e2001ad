"""A lease revoked under a running handler: the heartbeat tells it (ctx.revoked_lease_ids)
and, unless constraints.on_lease_revoked is "continue", the handler is stopped and the task
retries with result_code LEASE_REVOKED. On every backend, through the public API."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from creep import Creep, FrozenClock, TaskContext, TaskStatus, ValidationError
from creep.domain.asset import AssetStatus
from creep.domain.lease import LeaseStatus

NET = {"sku_category": "RAW_NET", "sku_code": "ip.residential.uk.*"}
IP = {"sku_category": "RAW_NET", "sku_code": "ip.residential.uk.1"}


@pytest.fixture
def app(db_url: str) -> Iterator[Creep]:
    creep_app = Creep(db_url, clock=FrozenClock())
    yield creep_app
    creep_app.close()


def test_ban_under_a_running_handler_stops_it_within_one_heartbeat(app: Creep) -> None:
    asset = app.create_asset(**IP)
    seen: list[list[str]] = []
    finished: list[bool] = []

    @app.handler("HOLD")
    async def hold(ctx: TaskContext) -> None:
        app.ban_asset(asset.asset_id, reason="flagged by the provider")  # an operator
        seen.append(list(ctx.revoked_lease_ids))
        try:
            await ctx.heartbeat()
        finally:
            seen.append(list(ctx.revoked_lease_ids))
        finished.append(True)

    t = app.submit(task_type="HOLD", resource_hints=[NET],
                   constraints={"max_retries": 2})
    app.run_worker(burst=True, install_signals=False)
    lease = app.list_leases(task_id=t.task_id)[0]
    assert lease.status is LeaseStatus.REVOKED
    assert seen == [[], [lease.lease_id]] and finished == []
    task = app.get_task(t.task_id)
    assert (task.status, task.result_code, task.attempt) == (
        TaskStatus.QUEUED, "LEASE_REVOKED", 1)
    assert app.get_asset(asset.asset_id).status is AssetStatus.BANNED
    assert [e.event_type for e in app.task_events(t.task_id)][-1] == "retrying"


def test_the_lifeline_heartbeat_cancels_an_async_handler(app: Creep) -> None:
    asset = app.create_asset(**IP)

    @app.handler("HOLD")
    async def hold(ctx: TaskContext) -> str:
        app.archive_asset(asset.asset_id, reason="sold off")
        await asyncio.sleep(60)  # cancelled by the worker's own heartbeat, not reached
        return "slept"

    t = app.submit(task_type="HOLD", resource_hints=[NET],
                   constraints={"max_retries": 0})
    app.run_worker(burst=True, install_signals=False, claim_ttl=1.0, heartbeat_interval=0.05)
    task = app.get_task(t.task_id)
    assert task.status is TaskStatus.DEAD_LETTER and task.result_code == "MAX_RETRIES_EXCEEDED"
    assert "revoked" in (task.result_message or "")
    assert app.list_leases(task_id=t.task_id)[0].status is LeaseStatus.REVOKED


def test_continue_keeps_the_handler_running_and_told(app: Creep) -> None:
    asset = app.create_asset(**IP)

    @app.handler("HOLD")
    def hold(ctx: TaskContext) -> list[str]:  # a plain (sync) handler
        app.ban_asset(asset.asset_id)
        ctx.heartbeat()
        return ctx.revoked_lease_ids

    t = app.submit(task_type="HOLD", resource_hints=[NET],
                   constraints={"on_lease_revoked": "continue"})
    app.run_worker(burst=True, install_signals=False)
    task = app.get_task(t.task_id)
    lease = app.list_leases(task_id=t.task_id)[0]
    assert task.status is TaskStatus.SUCCESS and task.result_payload == [lease.lease_id]


def test_on_lease_revoked_is_validated(app: Creep) -> None:
    with pytest.raises(ValidationError) as err:
        app.submit(task_type="HOLD", constraints={"on_lease_revoked": "ignore"})
    assert "constraints.on_lease_revoked" in str(err.value)
