"""Asset events reported by handlers (ctx.report_event) and from outside a task
(report_asset_event): what the control plane accepts of them and does because of them. On
every backend, through the public API."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from creep import Creep, FrozenClock, TaskContext, TaskStatus, ValidationError
from creep.domain.asset import AssetStatus
from creep.domain.errors import ConflictError, IllegalTransition
from creep.domain.lease import LeaseStatus

NET = {"sku_category": "RAW_NET", "sku_code": "ip.residential.uk.*"}
IP = {"sku_category": "RAW_NET", "sku_code": "ip.residential.uk.1"}


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


# -- the asset's status as a reported event states it ----------------------------------------


def _types(app: Creep, asset_id: str) -> list[str]:
    return [e.event_type for e in app.asset_events(asset_id=asset_id)]


def test_old_and_new_status_must_be_asset_statuses(app: Creep) -> None:
    asset = app.create_asset(**IP)
    for bad in ("banned", "GONE", "", 3, ["BANNED"]):
        with pytest.raises(ValidationError) as err:
            app.report_asset_event(asset_id=asset.asset_id, event_type="PROBE",
                                   old_status=bad, new_status=bad)
        assert [f for f, _ in err.value.errors] == ["old_status", "new_status"]
        assert "'BANNED'" in err.value.errors[0][1]
    assert _types(app, asset.asset_id) == ["IMPORTED"]


def test_a_report_cannot_pass_for_creep_s_own_event(app: Creep) -> None:
    """source tells creep's own logic from the world outside it (seed 001): a reporter that
    said control_plane passed for creep itself."""
    asset = app.create_asset(**IP)
    with pytest.raises(ValidationError) as err:
        app.report_asset_event(asset_id=asset.asset_id, event_type="PROBE_FAIL",
                               source="control_plane")
    assert [f for f, _ in err.value.errors] == ["source"]
    assert _types(app, asset.asset_id) == ["IMPORTED"]
    event = app.report_asset_event(asset_id=asset.asset_id, event_type="PROBE_FAIL",
                                   source="worker_node")
    assert event.source == "worker_node"


@pytest.mark.parametrize("event_type", [
    "BANNED", "ASSET_BANNED", "UNBANNED", "COOLING_START", "COOLING_END", "ALLOCATED",
    "RELEASED", "LEASE_REVOKED", "TASK_SUCCESS", "TASK_FAIL", "TASK_TIMEOUT", "ARCHIVED",
    "SOLD", "IMPORTED", "STATUS_READY",
])
def test_event_types_creep_writes_itself_are_refused(app: Creep, event_type: str) -> None:
    asset = app.create_asset(**IP)
    with pytest.raises(ValidationError) as err:
        app.report_asset_event(asset_id=asset.asset_id, event_type=event_type,
                               new_status="BANNED")
    assert [f for f, _ in err.value.errors] == ["event_type"]
    assert "written by creep itself" in err.value.errors[0][1]
    assert app.get_asset(asset.asset_id).status is AssetStatus.READY
    assert _types(app, asset.asset_id) == ["IMPORTED"]


def test_a_reported_ban_bans_the_asset_through_an_event_it_caused(app: Creep) -> None:
    asset = app.create_asset(**IP)
    reported = app.report_asset_event(
        asset_id=asset.asset_id, event_type="PROVIDER_BANNED", new_status="BANNED",
        provider_status="BANNED", message="the provider flagged the IP")
    assert (reported.old_status, reported.new_status) == ("READY", "BANNED")
    assert reported.source == "external_provider"
    after = app.get_asset(asset.asset_id)
    assert after.status is AssetStatus.BANNED and after.version == asset.version + 1
    assert _types(app, asset.asset_id) == ["IMPORTED", "PROVIDER_BANNED", "BANNED"]
    banned = app.asset_events(asset_id=asset.asset_id, event_type="BANNED")[0]
    assert (banned.causation_id, banned.source, banned.old_status, banned.new_status) == (
        reported.event_id, "control_plane", "READY", "BANNED")
    assert banned.provider_status == "BANNED"
    assert banned.message == "the provider flagged the IP"
    assert [e.event_id for e in app.asset_event_chain(banned.event_id)] == [
        banned.event_id, reported.event_id]
    # Banned as by an operator: never leased, until unbanned.
    app.handler("NEVER")(lambda ctx: None)
    t = app.submit(task_type="NEVER", resource_hints=[NET])
    app.run_worker(burst=True, install_signals=False)
    assert app.get_task(t.task_id).status is TaskStatus.QUEUED


def test_reported_changes_follow_the_transition_table(app: Creep, clock: FrozenClock) -> None:
    app.set_ban_policy("RAW_NET", max_failures=2, window_seconds=600)
    asset = app.create_asset(**IP, status="NEW", cooldown_seconds=30)
    steps = [("PROVIDER_READY", "READY", "STATUS_READY"),
             ("RATE_LIMITED", "COOLING", "COOLING_START"),
             ("RATE_LIMIT_LIFTED", "READY", "COOLING_END"),
             ("PROBE_FAIL", None, None),  # a failure (1 of 2): no change
             ("PROVIDER_BANNED", "BANNED", "BANNED"),
             ("PROVIDER_CLEARED", "READY", "UNBANNED")]
    for event_type, new_status, creeps in steps:
        before = app.get_asset(asset.asset_id).status
        reported = app.report_asset_event(asset_id=asset.asset_id, event_type=event_type,
                                          new_status=new_status)
        assert (reported.old_status, reported.new_status) == (
            before.value, new_status or before.value)
        latest = app.asset_events(asset_id=asset.asset_id)[-1]
        if creeps is None:
            assert latest.event_id == reported.event_id
            continue
        assert (latest.event_type, latest.causation_id) == (creeps, reported.event_id)
        assert app.get_asset(asset.asset_id).status.value == new_status
        if creeps == "COOLING_START":
            assert app.get_asset(asset.asset_id).cooldown_until == clock.now() + timedelta(
                seconds=30)
    # Unbanned by a report as by unban_asset: the failure before it no longer counts.
    app.report_asset_event(asset_id=asset.asset_id, event_type="PROBE_FAIL")
    assert app.get_asset(asset.asset_id).status is AssetStatus.READY
    app.report_asset_event(asset_id=asset.asset_id, event_type="PROBE_FAIL")
    assert app.get_asset(asset.asset_id).status is AssetStatus.BANNED


def test_an_unban_reported_as_a_failure_is_not_banned_again_by_older_failures(
    app: Creep
) -> None:
    app.set_ban_policy("RAW_NET", max_failures=2, window_seconds=600)
    asset = app.create_asset(**IP)
    app.report_asset_event(asset_id=asset.asset_id, event_type="PROBE_FAIL")
    app.report_asset_event(asset_id=asset.asset_id, event_type="PROBE_FAIL")
    assert app.get_asset(asset.asset_id).status is AssetStatus.BANNED
    app.report_asset_event(asset_id=asset.asset_id, event_type="RECHECK_FAIL",
                           new_status="READY")
    assert app.get_asset(asset.asset_id).status is AssetStatus.READY
    assert _types(app, asset.asset_id)[-2:] == ["RECHECK_FAIL", "UNBANNED"]


@pytest.mark.parametrize(("start", "new_status", "error"), [
    ("BANNED", "SOLD", IllegalTransition),
    ("NEW", "COOLING", IllegalTransition),
    ("ARCHIVED", "READY", IllegalTransition),
    ("READY", "NEW", IllegalTransition),
    ("READY", "IN_USE", ValidationError),
])
def test_an_illegal_reported_change_is_refused_and_nothing_stored(
    app: Creep, start: str, new_status: str, error: type[Exception]
) -> None:
    asset = app.create_asset(**IP, status="NEW" if start == "NEW" else "READY")
    if start == "BANNED":
        app.ban_asset(asset.asset_id)
    elif start == "ARCHIVED":
        app.archive_asset(asset.asset_id)
    before = app.get_asset(asset.asset_id)
    kinds = _types(app, asset.asset_id)
    with pytest.raises(error) as err:
        app.report_asset_event(asset_id=asset.asset_id, event_type="PROVIDER_SAYS",
                               new_status=new_status)
    if isinstance(err.value, ValidationError):
        assert [f for f, _ in err.value.errors] == ["new_status"]
    else:
        assert "new_status" in str(err.value)
        assert f"{start} -> {new_status}" in str(err.value)
    assert app.get_asset(asset.asset_id) == before
    assert _types(app, asset.asset_id) == kinds


def test_a_stale_old_status_is_a_conflict_and_nothing_is_stored(app: Creep) -> None:
    asset = app.create_asset(**IP)
    with pytest.raises(ConflictError) as err:
        app.report_asset_event(asset_id=asset.asset_id, event_type="PROVIDER_BANNED",
                               old_status="IN_USE", new_status="BANNED")
    assert "is READY, not IN_USE (old_status)" in str(err.value)
    assert app.get_asset(asset.asset_id).status is AssetStatus.READY
    assert _types(app, asset.asset_id) == ["IMPORTED"]
    # The status it has, or none: taken.
    same = app.report_asset_event(asset_id=asset.asset_id, event_type="PROBE_OK",
                                  old_status="READY")
    assert (same.old_status, same.new_status) == ("READY", "READY")
    unchanged = app.report_asset_event(asset_id=asset.asset_id, event_type="PROBE_OK",
                                       old_status="READY", new_status="READY")
    assert (unchanged.old_status, unchanged.new_status) == ("READY", "READY")
    assert _types(app, asset.asset_id) == ["IMPORTED", "PROBE_OK", "PROBE_OK"]


def test_a_handler_reporting_a_ban_revokes_every_lease_and_the_other_handler_is_told(
    app: Creep,
) -> None:
    """One handler reports a BANNED status change while another task holds a lease on the
    same asset: as with an operator's ban, both leases are REVOKED; the reporter knows of its
    own at once (and goes on), the other handler is told on its next heartbeat and stopped,
    its task retried LEASE_REVOKED."""
    asset = app.create_asset(**IP, max_concurrency=2)
    holding, reported = asyncio.Event(), asyncio.Event()
    seen: dict[str, list[list[str]]] = {"hold": [], "snipe": []}

    @app.handler("HOLD")
    async def hold(ctx: TaskContext) -> None:
        holding.set()
        await asyncio.wait_for(reported.wait(), 10)
        seen["hold"].append(list(ctx.revoked_lease_ids))
        try:
            await ctx.heartbeat()
        finally:
            seen["hold"].append(list(ctx.revoked_lease_ids))

    @app.handler("SNIPE")
    async def snipe(ctx: TaskContext) -> str:
        await asyncio.wait_for(holding.wait(), 10)
        event = await ctx.report_event("HTTP_403_BANNED", old_status="IN_USE",
                                       new_status="BANNED", http_status=403)
        seen["snipe"].append(list(ctx.revoked_lease_ids))
        reported.set()
        return event.event_id

    held = app.submit(task_type="HOLD", resource_hints=[NET], constraints={"max_retries": 2})
    sniper = app.submit(task_type="SNIPE", resource_hints=[NET])
    app.run_worker(burst=True, install_signals=False, concurrency=2)

    [held_lease] = app.list_leases(task_id=held.task_id)
    [own_lease] = app.list_leases(task_id=sniper.task_id)
    assert held_lease.status is own_lease.status is LeaseStatus.REVOKED
    assert seen == {"hold": [[], [held_lease.lease_id]], "snipe": [[own_lease.lease_id]]}
    task = app.get_task(held.task_id)
    assert (task.status, task.result_code, task.attempt) == (
        TaskStatus.QUEUED, "LEASE_REVOKED", 1)
    done = app.get_task(sniper.task_id)
    assert done.status is TaskStatus.SUCCESS
    assert app.get_asset(asset.asset_id).status is AssetStatus.BANNED

    event_id = done.result_payload
    [event] = [e for e in app.asset_events(asset_id=asset.asset_id) if e.event_id == event_id]
    assert (event.event_type, event.source, event.old_status, event.new_status) == (
        "HTTP_403_BANNED", "worker_node", "IN_USE", "BANNED")
    [banned] = app.asset_events(asset_id=asset.asset_id, event_type="BANNED")
    assert (banned.causation_id, banned.task_id, banned.lease_id, banned.correlation_id) == (
        event.event_id, sniper.task_id, own_lease.lease_id, done.correlation_id)
    revoked = app.asset_events(asset_id=asset.asset_id, event_type="LEASE_REVOKED")
    assert sorted(e.lease_id or "" for e in revoked) == sorted(
        [held_lease.lease_id, own_lease.lease_id])
    assert {e.causation_id for e in revoked} == {banned.event_id}
    # The chain of the other task's revocation leads to the report that caused it.
    [theirs] = [e for e in revoked if e.lease_id == held_lease.lease_id]
    assert [e.event_type for e in app.asset_event_chain(theirs.event_id)] == [
        "LEASE_REVOKED", "BANNED", "HTTP_403_BANNED"]
