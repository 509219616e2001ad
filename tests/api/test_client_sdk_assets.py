"""The Python SDK's asset, lease, asset event, ledger and schedule calls against a real server
(SQLite and PostgreSQL): sync `Client` and async `AsyncClient`."""

from __future__ import annotations

import asyncio
import uuid
from decimal import Decimal

import pytest

from creep.client import ApiProblem, AsyncClient, BanPolicy, Client, Execution, Schedule
from tests.api.conftest import Server


def test_assets_leases_events_and_ledger(server: Server) -> None:
    _, key = server.tenant()
    with Client(server.url, key) as c:
        one = c.create_asset(sku_category="RAW_NET", sku_code="ip.uk.1", cost_per_lease="1.5",
                             attributes={"country": "uk"}, cooldown_seconds=0)
        assert one.cost_per_lease == Decimal("1.5") and one.status == "READY"
        two = c.create_assets([{"sku_category": "RAW_NET", "sku_code": "ip.uk.2"},
                               {"sku_category": "RAW_NET", "sku_code": "ip.de.1"}])
        assert [a.sku_code for a in two] == ["ip.uk.2", "ip.de.1"]

        # A list import is one transaction: one bad asset and none is written.
        with pytest.raises(ApiProblem) as bad:
            c.create_assets([{"sku_category": "RAW_NET", "sku_code": "ip.fr.1"},
                             {"sku_category": "RAW_NET", "sku_code": "ip.fr.2",
                              "max_concurrency": 0}])
        assert bad.value.status == 422
        assert [e["field"] for e in bad.value.errors] == ["[1].max_concurrency"]
        with pytest.raises(ApiProblem) as exists:
            c.create_assets([{"sku_category": "RAW_NET", "sku_code": "ip.fr.3"},
                             {"sku_category": "RAW_NET", "sku_code": "ip.fr.4",
                              "asset_id": one.asset_id}])
        assert [e["field"] for e in exists.value.errors] == ["[1].asset_id"]
        assert [a.sku_code for a in c.iter_assets(sku_code="ip.fr.*")] == []

        assert len(list(c.iter_assets(sku_code="ip.uk.*", page_size=1))) == 2
        assert len(c.list_assets(limit=1).items) == 1
        assert c.get_asset(one.asset_id).attributes == {"country": "uk"}
        assert c.ban_asset(two[1].asset_id, reason="probe").status == "BANNED"
        assert c.unban_asset(two[1].asset_id).status == "READY"
        assert c.archive_asset(two[1].asset_id).status == "ARCHIVED"
        kinds = [e.event_type for e in c.asset_events(two[1].asset_id)]
        assert kinds[0] == "IMPORTED" and len(kinds) == 4
        latest = c.asset_events(two[1].asset_id, order="newest", limit=2)
        assert [e.event_type for e in latest] == kinds[:-3:-1]
        assert [e.event_type for e in c.iter_events(asset_id=two[1].asset_id, order="newest",
                                                    page_size=3)] == kinds[::-1]

        # A real claim over the worker protocol leases the asset and charges its cost.
        kind = f"LEASED-{uuid.uuid4().hex[:8]}"
        task = c.create_task(task_type=kind, env="dev", constraints={"keep_leases": True},
                             resource_hints=[{"sku_category": "RAW_NET",
                                              "attributes": {"country": "uk"}}])
        [claimed] = c.claim([kind])
        [lease] = c.list_leases(task_id=task.task_id)
        assert lease.status == "ACTIVE" and lease.cost == Decimal("1.5")
        assert c.list_leases(asset_id=lease.asset_id, status="ACTIVE") == [lease]
        assert c.list_leases(order="newest", limit=1) == [lease]
        assert c.release_lease(lease.lease_id).status == "RELEASED"
        c.worker_action(task.task_id, "complete", claimed.claim_token, result={})

        [cost] = c.list_ledger(task_id=task.task_id).items
        assert (cost.entry_type, cost.amount) == ("COST", Decimal("1.5"))
        revenue = c.record_entry("REVENUE", Decimal("4"), "USD", task_id=task.task_id,
                                 description="sold")
        assert revenue.amount == Decimal("4")
        assert [e.entry_type for e in c.iter_ledger(task_id=task.task_id, page_size=1)] == [
            "COST", "REVENUE"]
        summary = c.ledger_summary(["task_id"], task_id=task.task_id)
        assert summary.group_by == ["task_id", "currency"]
        [group] = summary.items
        assert (group.cost, group.revenue, group.margin) == (Decimal("1.5"), Decimal("4"),
                                                             Decimal("2.5"))
        assert c.ledger_summary(from_=revenue.occurred_at).items[0].cost == Decimal("0")
        assert b"REVENUE" in c.ledger_csv(task_id=task.task_id)

        reported = c.report_event("PROBE_FAILED", one.asset_id, severity="WARN",
                                  correlation_id="probe-1", http_status=503)
        assert reported.event.http_status == 503 and reported.caused == []
        assert [e.event_id for e in c.event_chain(reported.event.event_id)] == [
            reported.event.event_id]
        assert [e.event_type for e in c.iter_events(correlation_id="probe-1")] == [
            "PROBE_FAILED"]
        assert b"PROBE_FAILED" in c.events_csv(asset_id=one.asset_id)
        with pytest.raises(ApiProblem) as missing:
            c.get_asset(str(uuid.uuid4()))
        assert missing.value.status == 404


def test_schedules_async_and_sync(server: Server) -> None:
    tenant_id, key = server.tenant()

    async def main() -> tuple[Schedule, Execution, list[Execution]]:
        async with AsyncClient(server.url, key) as c:
            sched = await c.create_schedule(name="nightly", type="NO_HANDLER", interval=3600,
                                            data={"x": 1})
            assert sched.tenant_id == tenant_id and sched.enabled and sched.interval == 3600
            assert [s.uid for s in await c.list_schedules()] == [sched.uid]
            assert (await c.get_schedule("nightly")).uid == sched.uid
            off = await c.update_schedule(sched.uid, sched.version, enabled=False)
            assert not off.enabled and off.version == sched.version + 1
            with pytest.raises(ApiProblem) as stale:
                await c.update_schedule(sched.uid, sched.version, priority=3)
            assert stale.value.status == 412
            assert await c.list_schedules(enabled=True) == []
            fired = await c.trigger_schedule(sched.uid)
            history = [e async for e in c.iter_executions(sched.uid, page_size=1)]
            assert [a.asset_id async for a in c.iter_assets()] == []
            return sched, fired, history

    sched, fired, history = asyncio.run(main())
    assert fired.trigger_type == "manual" and fired.task_id
    assert [e.execution_uid for e in history] == [fired.execution_uid]
    with Client(server.url, key) as c:
        assert c.get_task(fired.task_id).input_payload == {"x": 1}
        assert c.list_executions(sched.uid, trigger_type="scheduled").items == []
        with pytest.raises(ApiProblem) as invalid:
            c.create_schedule(name="bad", type="X", cron_expr="not a cron")
        assert invalid.value.status == 422
        c.delete_schedule(sched.uid)
        with pytest.raises(ApiProblem) as gone:
            c.get_schedule(sched.uid)
        assert gone.value.status == 404


def test_update_assets_sync_and_async(server: Server) -> None:
    _, key = server.tenant()
    with Client(server.url, key) as c:
        new = c.create_asset(sku_category="RAW_NET", sku_code="ip.nl.1", status="NEW")
        other = c.create_asset(sku_category="RAW_NET", sku_code="ip.nl.2")
        ready = c.update_asset(new.asset_id, new.version, status="READY", health_score=70,
                               cost_per_lease=Decimal("0.125"), attributes={"geo": "nl"})
        assert (ready.status, ready.health_score, ready.cost_per_lease, ready.version) == (
            "READY", 70, Decimal("0.125"), 2)
        with pytest.raises(ApiProblem) as stale:
            c.update_asset(new.asset_id, new.version, health_score=1)
        assert stale.value.status == 412 and stale.value.body["current_version"] == 2
        with pytest.raises(ApiProblem) as bad:
            c.update_assets([(new.asset_id, 2, {"health_score": 5}),
                             (other.asset_id, 1, {"currency": "usd"})])
        assert [e["field"] for e in bad.value.errors] == ["items[1].currency"]
        assert c.get_asset(new.asset_id) == ready

    async def main() -> list[str]:
        async with AsyncClient(server.url, key) as ac:
            both = await ac.update_assets([(new.asset_id, 2, {"health_score": 5}),
                                           (other.asset_id, 1, {"status": "SOLD"})])
            assert [a.version for a in both] == [3, 2]
            with pytest.raises(ApiProblem) as illegal:
                await ac.update_asset(other.asset_id, 2, status="READY")
            assert illegal.value.status == 409
            one = await ac.update_asset(new.asset_id, 3, max_concurrency=4)
            return [one.status, str(one.max_concurrency), both[1].status]

    assert asyncio.run(main()) == ["READY", "4", "SOLD"]


def test_iter_leases_reads_every_page(server: Server) -> None:
    """GET /v1/leases pages by next_cursor, but list_leases gives one page and drops the
    cursor: beyond `limit` (at most 10,000) the rest could not be read. iter_leases follows
    the cursor over every page (in either order), sync and async."""
    _, key = server.tenant()
    kind = f"LEASED-{uuid.uuid4().hex[:8]}"
    with Client(server.url, key) as c:
        asset = c.create_asset(sku_category="PAGED_NET", sku_code="ip.p.1", max_concurrency=3,
                               cooldown_seconds=0)
        for _ in range(3):
            c.create_task(task_type=kind, env="dev",
                          resource_hints=[{"sku_category": "PAGED_NET"}])
        assert len(c.claim([kind], max_tasks=3)) == 3
        first = c.list_leases(asset_id=asset.asset_id)
        assert len(first) == 3 and len(c.list_leases(asset_id=asset.asset_id, limit=2)) == 2
        assert list(c.iter_leases(asset_id=asset.asset_id, page_size=2)) == first
        newest = list(c.iter_leases(asset_id=asset.asset_id, order="newest", page_size=1))
        assert newest == first[::-1]

    async def main() -> list[str]:
        async with AsyncClient(server.url, key) as ac:
            return [x.lease_id async for x in ac.iter_leases(asset_id=asset.asset_id,
                                                             page_size=2)]

    assert asyncio.run(main()) == [x.lease_id for x in first]


def test_ban_policies_sync_and_async(server: Server) -> None:
    tenant, key = server.tenant()
    with Client(server.url, key) as c:
        with pytest.raises(ApiProblem) as none:
            c.get_ban_policy("RAW_NET")
        assert none.value.status == 404
        made = c.set_ban_policy("RAW_NET", max_failures=2, window_seconds=600,
                                failure_event_types=["HTTP_PROBE_FAIL"])
        assert isinstance(made, BanPolicy) and made.tenant_id == tenant
        assert (made.max_failures, made.window_seconds, made.failure_event_types) == (
            2, 600, ["HTTP_PROBE_FAIL"])
        assert made.updated_at is not None and made.updated_at.tzinfo is not None
        assert c.get_ban_policy("RAW_NET") == made
        with pytest.raises(ApiProblem) as bad:
            c.set_ban_policy("RAW_NET", max_failures=0, window_seconds=10**8)
        assert bad.value.status == 422
        assert sorted(e["field"] for e in bad.value.errors) == ["max_failures", "window_seconds"]
        c.set_ban_policy("GPU/A100", max_failures=5, window_seconds=60)
        assert [p.sku_category for p in c.iter_ban_policies(page_size=1)] == [
            "GPU/A100", "RAW_NET"]
        page = c.list_ban_policies(limit=1)
        assert len(page.items) == 1 and page.next_cursor

        # The policy set through the SDK bans an asset at its second listed failure.
        asset = c.create_asset(sku_category="RAW_NET", sku_code="ip.se.1")
        first = c.report_event(asset_id=asset.asset_id, event_type="HTTP_PROBE_FAIL")
        assert first.caused == []
        second = c.report_event(asset_id=asset.asset_id, event_type="HTTP_PROBE_FAIL")
        assert [e.event_type for e in second.caused] == ["ASSET_BANNED"]
        assert c.get_asset(asset.asset_id).status == "BANNED"

    async def main() -> list[str]:
        async with AsyncClient(server.url, key) as ac:
            replaced = await ac.set_ban_policy("GPU/A100", max_failures=7, window_seconds=70)
            assert (await ac.get_ban_policy("GPU/A100")).max_failures == 7 == \
                replaced.max_failures
            await ac.delete_ban_policy("GPU/A100")
            with pytest.raises(ApiProblem) as gone:
                await ac.delete_ban_policy("GPU/A100")
            assert gone.value.status == 404
            assert len((await ac.list_ban_policies()).items) == 1
            return [p.sku_category async for p in ac.iter_ban_policies()]

    assert asyncio.run(main()) == ["RAW_NET"]
    with Client(server.url, server.admin_key) as admin:  # an admin names the tenant
        with pytest.raises(ApiProblem) as unnamed:
            admin.get_ban_policy("RAW_NET")
        assert [e["field"] for e in unnamed.value.errors] == ["tenant_id"]
        assert admin.get_ban_policy("RAW_NET", tenant_id=tenant).max_failures == 2
        assert admin.set_ban_policy("X", max_failures=1, window_seconds=1,
                                    tenant_id=tenant).tenant_id == tenant
        assert [p.sku_category for p in admin.iter_ban_policies(tenant_id=tenant)] == [
            "RAW_NET", "X"]
        admin.delete_ban_policy("X", tenant_id=tenant)
