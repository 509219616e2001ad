"""The Python SDK (creep.client) against a real server on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from pydantic import BaseModel

from creep.api.asset_schemas import (
    AssetEventOut,
    AssetOut,
    BanPolicyOut,
    LeaseOut,
    LedgerEntryOut,
    LedgerGroupOut,
)
from creep.api.schedule_schemas import ExecutionOut, ScheduleOut
from creep.api.schemas import (
    AuditOut,
    BatchOut,
    KeyCreated,
    KeyOut,
    TaskEventOut,
    TaskOut,
    TenantOut,
)
from creep.api.schemas_workers import ArtifactOut
from creep.client import (
    NO_RETRY,
    ApiProblem,
    AsyncClient,
    Client,
    RetryPolicy,
    TaskEvent,
    TransportError,
    models,
)
from creep.storage import open_store
from tests.api.conftest import Server


def test_tasks_idempotency_problems_and_pagination(server: Server) -> None:
    tenant_id, key = server.tenant()
    with Client(server.url, key) as c:
        first = c.create_task(task_type="NO_HANDLER", env="dev", idempotency_key="same",
                              input_payload={"n": 1})
        again = c.create_task({"task_type": "NO_HANDLER", "env": "dev",
                               "idempotency_key": "same", "input_payload": {"n": 1}})
        assert again.task_id == first.task_id and first.tenant_id == tenant_id
        # Without a key each call gets a fresh one, so these are two tasks.
        a = c.create_task(task_type="NO_HANDLER", env="dev")
        b = c.create_task(task_type="NO_HANDLER", env="dev")
        assert a.task_id != b.task_id and a.idempotency_key != b.idempotency_key
        with pytest.raises(ApiProblem) as conflict:
            c.create_task(task_type="NO_HANDLER", env="dev", idempotency_key="same",
                          input_payload={"n": 2})
        assert conflict.value.status == 409
        assert conflict.value.short_type == "idempotency-conflict"
        with pytest.raises(ApiProblem) as invalid:
            c.create_task(task_type="", priority=101)
        problem = invalid.value
        assert problem.status == 422 and problem.title == "Validation failed"
        assert {e["field"] for e in problem.errors} >= {"task_type", "priority"}
        assert problem.detail and problem.request_id
        with pytest.raises(ApiProblem) as missing:
            c.get_task(str(uuid.uuid4()))
        assert missing.value.status == 404

        for i in range(5):
            c.create_task(task_type="PAGED", env="dev", input_payload={"i": i})
        page = c.list_tasks(task_type="PAGED", limit=2)
        assert len(page.items) == 2 and page.next_cursor
        every = list(c.iter_tasks(task_type="PAGED", page_size=2))
        assert sorted(t.input_payload["i"] for t in every) == list(range(5))

        stale = c.get_task(a.task_id)
        updated = c.update_task(a.task_id, stale.task_version, priority=99)
        assert updated.priority == 99
        with pytest.raises(ApiProblem) as precondition:
            c.update_task(a.task_id, stale.task_version, priority=1)
        assert precondition.value.status == 412

        cancelled = c.cancel_task(a.task_id, reason="sdk test")
        assert cancelled.status == "CANCELLED" and cancelled.is_terminal
        events = list(c.follow_task_events(a.task_id))
        assert [e.to_status for e in events if e.to_status][-1] == "CANCELLED"
        assert [e.event_id for e in events] == [e.event_id for e in c.iter_task_events(a.task_id)]
        assert c.retry_task(a.task_id).status == "QUEUED"


def test_delete_and_restore_tasks(server: Server) -> None:
    """The recycle bin through the SDK: delete_task, restore_task, list_tasks(deleted=True),
    and the problems of an unfinished and of a deleted task (retried, given an artifact or
    a ledger entry)."""
    _, key = server.tenant()
    with Client(server.url, key) as c:
        running = c.create_task(task_type="NO_HANDLER")
        with pytest.raises(ApiProblem) as unfinished:
            c.delete_task(running.task_id)
        assert unfinished.value.status == 409
        assert unfinished.value.short_type == "task-not-finished"
        done = [c.cancel_task(c.create_task(task_type="NO_HANDLER").task_id)
                for _ in range(3)]
        with pytest.raises(ApiProblem) as stale:
            c.delete_task(done[0].task_id, expected_version=done[0].task_version - 1)
        assert stale.value.status == 412
        deleted = [c.delete_task(t.task_id, expected_version=t.task_version) for t in done]
        assert all(isinstance(t.deleted_at, datetime) for t in deleted)
        assert c.delete_task(done[0].task_id) == deleted[0]  # again: as it is
        assert c.get_task(done[0].task_id).deleted_at == deleted[0].deleted_at
        assert [t.task_id for t in c.iter_tasks()] == [running.task_id]
        in_bin = [t.task_id for t in c.iter_tasks(deleted=True, page_size=2)]
        assert in_bin == [t.task_id for t in done][::-1]
        for refused_call in (
            lambda: c.retry_task(done[0].task_id),
            lambda: c.upload_artifact(done[0].task_id, b"x", kind="log", file_name="x.log"),
            lambda: c.record_entry("REVENUE", "1", "USD", task_id=done[0].task_id),
        ):
            with pytest.raises(ApiProblem) as refused:
                refused_call()
            assert refused.value.status == 409
            assert refused.value.short_type == "task-deleted"
        assert c.list_artifacts(done[0].task_id) == []
        restored = c.restore_task(done[0].task_id)
        assert restored.deleted_at is None
        assert restored.task_version == deleted[0].task_version + 1
        assert c.restore_task(done[0].task_id) == restored
        assert c.retry_task(done[0].task_id).status == "QUEUED"

    async def main() -> None:
        async with AsyncClient(server.url, key) as ac:
            gone = await ac.delete_task(done[1].task_id)
            assert gone == deleted[1]
            page = await ac.list_tasks(deleted=True)
            assert [t.task_id for t in page.items] == [done[2].task_id, done[1].task_id]
            back = await ac.restore_task(done[1].task_id,
                                         expected_version=deleted[1].task_version)
            assert back.deleted_at is None
            with pytest.raises(ApiProblem) as unfinished:
                await ac.delete_task(running.task_id)
            assert unfinished.value.short_type == "task-not-finished"
            assert [t.task_id async for t in ac.iter_tasks(deleted=True)] == [done[2].task_id]

    asyncio.run(main())


def test_admin_batches_audit_and_artifacts(server: Server) -> None:
    with Client(server.url, server.admin_key) as admin:
        tenant_id = f"sdk-{uuid.uuid4().hex[:8]}"
        tenant = admin.create_tenant(tenant_id, name="SDK", max_active_tasks=100)
        assert admin.get_tenant(tenant_id).max_active_tasks == 100 == tenant.max_active_tasks
        assert tenant_id in {t.tenant_id for t in admin.iter_tenants(page_size=1)}
        created = admin.create_key("sdk key", tenant_id=tenant_id)
        assert created.key and created.tenant_id == tenant_id
        batch = admin.create_batch("sdk batch", [
            {"task_type": "NO_HANDLER", "ref": "a"},
            {"task_type": "NO_HANDLER", "depends_on": ["a"]},
        ], tenant_id=tenant_id, metadata={"source": "test"})
        assert batch.total_count == 2 and batch.tasks and len(batch.tasks) == 2
        assert admin.get_batch(batch.batch_id).status == "pending"
        assert batch.batch_id in {b.batch_id for b in admin.iter_batches(page_size=1)}
        assert admin.cancel_batch(batch.batch_id).cancelled_at is not None
        audit = list(admin.iter_audit(tenant_id=tenant_id, page_size=1))
        assert [a.action for a in audit][:2] == ["cancelled", "created"]
        assert b"cancelled" in admin.audit_csv(tenant_id=tenant_id)
        assert admin.health_live()["status"] == "ok"
        assert "creep" in admin.metrics()
        assert admin.set_log_level("WARNING")["level"] == "WARNING"
        assert admin.get_log_level()["level"] == "WARNING"
        assert admin.revoke_key(created.key_id).revoked_at is not None

    with Client(server.url, created.key, retry=NO_RETRY) as revoked:
        with pytest.raises(ApiProblem) as denied:
            revoked.list_tasks()
        assert denied.value.status == 401

    _, key = server.tenant()
    with Client(server.url, key) as c:
        task = c.create_task(task_type="NO_HANDLER", env="dev")
        art = c.upload_artifact(task.task_id, b"hello", kind="log", file_name="a.txt",
                                mime_type="text/plain", metadata={"k": "v"})
        assert art.size_bytes == 5 and c.get_artifact(art.artifact_id).checksum == art.checksum
        assert [x.artifact_id for x in c.list_artifacts(task.task_id)] == [art.artifact_id]
        assert c.download_artifact(art.artifact_id) == b"hello"
        # The HTTP worker protocol: claim the task, report progress, complete it.
        [claimed] = c.claim(["NO_HANDLER"], max_tasks=5)
        assert claimed.task.task_id == task.task_id
        c.worker_action(task.task_id, "progress", claimed.claim_token, progress=50)
        c.worker_action(task.task_id, "complete", claimed.claim_token, result={"ok": True})
        assert c.get_task(task.task_id).status == "SUCCESS"


def test_retries_honour_retry_after_on_429(server: Server) -> None:
    """A tenant allowed one request per second: the client waits out each 429 (Retry-After)
    and every call succeeds; without retries the 429 surfaces with its Retry-After."""
    _, key = server.tenant(rate_limit_per_second=1, rate_limit_burst=1)
    with Client(server.url, key, retry=RetryPolicy(max_retries=5, max_delay=5)) as c:
        for _ in range(3):
            assert c.list_tasks().items == []
        assert c.stats.retries >= 1 and set(c.stats.statuses) == {429}
        assert c.stats.waited >= 1.0  # Retry-After is at least one second
    with Client(server.url, key, retry=NO_RETRY) as c:
        with pytest.raises(ApiProblem) as limited:
            for _ in range(5):
                c.list_tasks()
        assert limited.value.status == 429 and (limited.value.retry_after or 0) >= 1

    async def main() -> int:
        async with AsyncClient(server.url, key, retry=RetryPolicy(max_retries=5)) as ac:
            for _ in range(3):
                await ac.list_tasks()
            return ac.stats.retries

    assert asyncio.run(main()) >= 1


def test_follow_task_events_waits_out_a_429_as_every_call_does(server: Server) -> None:
    """Client retries 429/503 per its RetryPolicy, waiting Retry-After; follow_task_events
    (creep task events --follow) raised the 429 of its opening request at once, so a tenant
    at its request rate could not follow a task. It waits it out too, sync and async."""
    _, key = server.tenant(rate_limit_per_second=1, rate_limit_burst=1)
    policy = RetryPolicy(max_retries=5, max_delay=5)
    with Client(server.url, key, retry=policy) as c:
        task = c.create_task(task_type="NO_HANDLER", env="dev")
        c.cancel_task(task.task_id)  # the bucket is empty now: the stream's request waits
        events = [e.event_type for e in c.follow_task_events(task.task_id)]  # was a 429
        assert events == ["created", "queued", "cancelled"]
        assert 429 in c.stats.statuses

    async def follow() -> tuple[list[str], list[int]]:
        async with AsyncClient(server.url, key, retry=policy) as ac:
            await ac.get_task(task.task_id)  # empties the bucket again
            names = [e.event_type async for e in ac.follow_task_events(task.task_id)]
            return names, ac.stats.statuses

    names, statuses = asyncio.run(follow())
    assert names == events and 429 in statuses


def test_async_client_follows_events(server: Server) -> None:
    _, key = server.tenant()

    async def main() -> tuple[list[TaskEvent], list[str]]:
        async with AsyncClient(server.url, key) as c:
            task = await c.create_task(task_type="NO_HANDLER", env="dev")
            await c.cancel_task(task.task_id)
            events = [e async for e in c.follow_task_events(task.task_id)]
            ids = [t.task_id async for t in c.iter_tasks(page_size=1)]
            return events, ids

    events, ids = asyncio.run(main())
    assert events[0].event_type == "created" and events[-1].to_status == "CANCELLED"
    assert len(ids) == 1


def test_follow_task_events_goes_past_an_event_named_end(server: Server) -> None:
    """The stream's close is `end` with no `id:` line. A task event of type `end` (a worker
    can no longer post one: 422 naming event_type; one written before the name was reserved
    is still in the log) is followed like any other, sync and async, up to the real close
    (the SDK used to return at it, losing every later event)."""
    _, key = server.tenant()
    kind = f"ENDER-{uuid.uuid4().hex[:8]}"
    with Client(server.url, key) as c:
        task = c.create_task(task_type=kind, env="dev")
        [claimed] = c.claim([kind])
        with pytest.raises(ApiProblem) as refused:
            c.worker_action(task.task_id, "events", claimed.claim_token, event_type="end")
        assert refused.value.status == 422
        assert [e["field"] for e in refused.value.errors] == ["event_type"]
        store = open_store(server.database_url)
        try:
            assert store.task_event_append(task.task_id, claimed.claim_token, "end", {"n": 1},
                                           datetime.now(UTC)) is not None
        finally:
            store.close()
        c.worker_action(task.task_id, "events", claimed.claim_token, event_type="log.line",
                        payload={"n": 2})
        c.worker_action(task.task_id, "complete", claimed.claim_token, result={})
        logged = [e.event_type for e in c.iter_task_events(task.task_id)]
        assert logged[-3:] == ["end", "log.line", "succeeded"]
        assert [e.event_type for e in c.follow_task_events(task.task_id)] == logged

    async def follow() -> list[str]:
        async with AsyncClient(server.url, key) as ac:
            return [e.event_type async for e in ac.follow_task_events(task.task_id)]

    assert asyncio.run(follow()) == logged


def test_unreachable_server_is_a_transport_error() -> None:
    with Client("http://127.0.0.1:9", "k", retry=RetryPolicy(max_retries=1, base_delay=0.01)) as c:
        with pytest.raises(TransportError):
            c.health_live()
        assert c.stats.retries == 1


def test_claim_long_poll_outlasting_the_client_timeout_answers(server: Server) -> None:
    """A claim may wait up to 60 s for work (`wait`), longer than the client's timeout (30 s by
    default): the long poll still answers, sync and async, instead of the client giving up
    at its own timeout with a TransportError (the server was still legitimately waiting)."""
    _, key = server.tenant()
    kind = f"IDLE-{uuid.uuid4().hex[:8]}"
    with Client(server.url, key, timeout=1, retry=NO_RETRY) as c:
        assert c.claim([kind], wait=2) == []

    async def main() -> list[object]:
        async with AsyncClient(server.url, key, timeout=1, retry=NO_RETRY) as ac:
            return list(await ac.claim([kind], wait=2))

    assert asyncio.run(main()) == []


def test_a_dot_identifier_names_that_resource_not_the_list_above_it(server: Server) -> None:
    """An id or name of `.` or `..` is sent as it is, not as a dot segment the URL resolves
    away: get_task('.') asked GET /v1/tasks/ and returned the task list read as a Task with
    every field None; it is a 404 now, and a schedule named '.' is found by its name."""
    _, key = server.tenant()
    with Client(server.url, key) as c:
        c.create_task(task_type="NO_HANDLER", env="dev")
        c.create_asset(sku_category="DOTS", sku_code="dot.1")
        for read in (c.get_task, c.get_asset, c.get_batch, c.get_schedule):
            for name in (".", ".."):
                with pytest.raises(ApiProblem) as missing:
                    read(name)
                assert missing.value.status == 404, (read, name)
        sched = c.create_schedule(name=".", type="NO_HANDLER", interval=3600)
        assert c.get_schedule(".").uid == sched.uid


#: Each SDK model and the REST response it reads.
_SDK_MODELS: list[tuple[type[models.Model], type[BaseModel]]] = [
    (models.Task, TaskOut), (models.TaskEvent, TaskEventOut), (models.Tenant, TenantOut),
    (models.ApiKey, KeyOut), (models.CreatedKey, KeyCreated), (models.Batch, BatchOut),
    (models.AuditEvent, AuditOut), (models.Artifact, ArtifactOut), (models.Asset, AssetOut),
    (models.BanPolicy, BanPolicyOut), (models.Lease, LeaseOut),
    (models.AssetEvent, AssetEventOut), (models.LedgerEntry, LedgerEntryOut),
    (models.LedgerGroup, LedgerGroupOut), (models.Schedule, ScheduleOut),
    (models.Execution, ExecutionOut),
]


@pytest.mark.parametrize(("model", "out"), _SDK_MODELS, ids=[m.__name__ for m, _ in _SDK_MODELS])
def test_sdk_models_carry_every_field_the_api_returns(
    model: type[models.Model], out: type[BaseModel]
) -> None:
    """The seeds' fields (TaskOrder's timeout_ms, resource_hints, lease_ids, correlation_id;
    AssetEvent's latency_ms, retryable, provider_status, version; ScheduledTask's
    max_duration_seconds, timeout_grace_period, labels; TaskExecution's progress,
    retry_count, error_stack; AuditEvent's timestamp, diff_object, client_ip ...) were left out
    of the SDK's typed models: reachable only through `raw`. Each model has every field of
    the response it reads."""
    have = {f.name for f in dataclasses.fields(model)} - {"raw"}
    assert set(out.model_fields) - have == set()


def test_sdk_models_read_the_seed_fields(server: Server) -> None:
    """Seed fields read through the SDK's typed models, with their types: money as Decimal,
    timestamps as datetimes."""
    _, key = server.tenant()
    with Client(server.url, key) as c:
        task = c.create_task(
            task_type="NO_HANDLER", env="prod", project_id="p", external_ref="ref-1",
            task_category="QA", description="d", priority=90, timeout_ms=120_000,
            max_total_cost="5.0", currency="USD", business_value_hint="50.0",
            resource_hints=[{"sku_category": "RAW_NET", "sku_code": "ip.uk.*"}],
            constraints={"max_retries": 1}, tenant_policies_version="tenant_policy.v3",
            tags=["a"], channel="openapi", correlation_id="corr-1")
        assert (task.project_id, task.external_ref, task.task_category, task.description,
                task.timeout_ms, task.business_value_hint, task.tenant_policies_version,
                task.channel, task.correlation_id, task.lease_ids, task.depends_on) == (
            "p", "ref-1", "QA", "d", 120_000, Decimal("50.0"), "tenant_policy.v3",
            "openapi", "corr-1", [], [])
        assert task.resource_hints[0]["sku_code"] == "ip.uk.*"
        assert task.constraints["max_retries"] == 1
        assert isinstance(task.queued_at, datetime) and task.started_at is None
        assert task.cancel_requested is False and task.deleted_at is None

        asset = c.create_asset(sku_category="RAW_NET", sku_code="ip.uk.1")
        event = c.report_event("HTTP_PROBE_FAIL", asset.asset_id, provider_status="OK",
                               error_message="Forbidden", latency_ms=850, retryable=True,
                               project_id="p", env="prod").event
        assert (event.provider_status, event.error_message, event.latency_ms, event.retryable,
                event.project_id, event.env, event.version) == (
            "OK", "Forbidden", 850, True, "p", "prod", 1)

        sched = c.create_schedule(name="seed-fields", type="NO_HANDLER", interval=3600,
                                  max_duration_seconds=600, timeout_grace_period=10,
                                  labels={"team": "qa"}, max_retries=2)
        assert (sched.max_duration_seconds, sched.timeout_grace_period, sched.labels,
                sched.max_retries, sched.consecutive_failures, sched.last_failure_error,
                sched.misfire_policy) == (600, 10, {"team": "qa"}, 2, 0, None, "once")
        run = c.trigger_schedule(sched.uid)
        assert (run.task_type, run.progress, run.retry_count, run.error_stack,
                run.result_truncated) == ("NO_HANDLER", 0, 0, None, False)
        assert isinstance(run.created_at, datetime)
    with Client(server.url, server.admin_key) as admin:
        [row] = admin.list_audit(resource_type="scheduledTask", action="triggered",
                                 resource_id=sched.uid).items
        assert row.timestamp > 0 and row.request_method == "POST"
        assert row.diff_object["new_object"] is not None and row.client_ip
