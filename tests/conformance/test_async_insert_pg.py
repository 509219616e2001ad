"""The API's group commits of new tasks on PostgreSQL, awaited on the event loop
(storage/postgres_async.py, api/create_batcher.py): what is inserted is committed with its
creation events and audit rows, a key that exists already is left to the general path (which
replays or refuses it), and a batch the event loop cannot write is written by the thread."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from creep import Creep
from creep.api.audit import AUTO, AuditWrite, audit_row
from creep.api.auth import Principal
from creep.api.create_batcher import CreateBatcher
from creep.api.limits import TenantLimits
from creep.api.routes.tasks import quota_writes
from creep.api.services import Services
from creep.api.settings import load_settings
from creep.domain.errors import IdempotencyConflict, StorageError
from creep.domain.task_spec import validate_task_spec
from creep.domain.tenancy import Role
from creep.ports_api import AuditFilter
from creep.storage import postgres_async
from creep.storage.common import initial_status, new_task

_PRINCIPAL = Principal(key_id="k1", name="test", role=Role.TENANT, tenant_id="t1",
                       read_only=False)


@pytest.fixture
def pg_app(pg_schemas: Callable[[], str]) -> Iterator[Creep]:
    app = Creep(pg_schemas())
    yield app
    app.close()


def _spec(app: Creep, key: str, **extra: Any) -> Any:
    fields = {"task_type": "A", "tenant_id": "t1", "idempotency_key": key,
              "input_payload": {"k": key}, **extra}
    return validate_task_spec(fields, now=app.clock.now())


def _built(specs: list[Any], now: datetime) -> dict[str, Any]:
    """Each spec's task as the API builds it for its audit row (CreatedTaskAudits)."""
    return {s.task_id: new_task(s, initial_status(s, {}, now), now) for s in specs}


def _audit(app: Creep, spec: Any) -> AuditWrite:
    row = audit_row(_PRINCIPAL, "created", "task", spec.task_id, now=app.clock.now(),
                    client_ip="127.0.0.1", user_agent="t", method="POST", tenant_id="t1")
    return AuditWrite(row, spec.task_id, None, AUTO, skip_if_missing=True)


def _audited(app: Creep, task_id: str) -> int:
    store: Any = app.store
    return len(store.audit_list(AuditFilter(resource_id=task_id)))


def _events(app: Creep, task_id: str) -> list[str]:
    return [e.event_type for e in app.task_events(task_id)]


def test_inserter_commits_new_tasks_and_leaves_known_keys_out(pg_app: Creep) -> None:
    store: Any = pg_app.store
    [old] = store.task_create_many([_spec(pg_app, "old")], pg_app.clock.now())
    fresh = [_spec(pg_app, "n1"), _spec(pg_app, "n2", priority=7)]
    twin = _spec(pg_app, "n1")  # the same key twice in one batch: the first one wins
    again = _spec(pg_app, "old")
    specs = [*fresh, twin, again]
    now = pg_app.clock.now()
    audits = [_audit(pg_app, s).row for s in specs]
    woken: list[int] = []

    async def insert() -> dict[str, Any]:
        inserter = postgres_async.PostgresAsyncInserter(store.conninfo, lambda: woken.append(1))
        try:
            return await inserter.insert_new(specs, _built(specs, now), now, audits)
        finally:
            await inserter.aclose()

    created = asyncio.run(insert())
    assert set(created) == {s.task_id for s in fresh}
    assert created[fresh[1].task_id].priority == 7 and woken == [1]
    for spec in fresh:  # committed: another connection reads them, events and audit included
        assert pg_app.get_task(spec.task_id).status == "QUEUED"
        assert _events(pg_app, spec.task_id) == ["created", "queued"]
        assert _audited(pg_app, spec.task_id) == 1
    for spec in (twin, again):  # neither the task nor its audit row
        assert _audited(pg_app, spec.task_id) == 0
    keys = [t.idempotency_key for t in pg_app.list_tasks(tenant_id="t1")]
    assert sorted(keys) == ["n1", "n2", "old"] and old.idempotency_key == "old"


def test_inserter_reports_an_unreachable_database_as_a_storage_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(postgres_async, "_CONNECT_TIMEOUT_S", 0.5)
    now = datetime.now(UTC)
    spec = validate_task_spec({"task_type": "A", "tenant_id": "t1"}, now=now)

    async def insert() -> None:
        inserter = postgres_async.PostgresAsyncInserter(
            "postgresql://127.0.0.1:1/nowhere?connect_timeout=1", lambda: None)
        try:
            await inserter.insert_new([spec], _built([spec], now), now, [])
        finally:
            await inserter.aclose()

    with pytest.raises(StorageError):
        asyncio.run(insert())


def _batcher(app: Creep) -> CreateBatcher:
    settings = load_settings({}, database_url="postgresql://unused")
    return CreateBatcher(Services(settings=settings, store=app.store,  # type: ignore[arg-type]
                                  clock=app.clock))


async def _create_all(batcher: CreateBatcher, app: Creep, specs: list[Any]) -> list[Any]:
    try:
        return await asyncio.gather(
            *(batcher.create(s, [_audit(app, s)]) for s in specs), return_exceptions=True)
    finally:
        await batcher.aclose()


def test_batcher_answers_new_replayed_and_conflicting_keys_in_one_batch(pg_app: Creep) -> None:
    store: Any = pg_app.store
    [old] = store.task_create_many([_spec(pg_app, "old")], pg_app.clock.now())
    specs = [_spec(pg_app, "a"), _spec(pg_app, "old"), _spec(pg_app, "b"),
             _spec(pg_app, "old", priority=3), _spec(pg_app, "a")]
    batcher = _batcher(pg_app)
    assert batcher._inserter is not None  # PostgreSQL: the event loop writes new tasks
    out = asyncio.run(_create_all(batcher, pg_app, specs))
    a, replay, b, conflict, a_again = out
    assert not a.replayed and not b.replayed and a.task_id == specs[0].task_id
    assert replay.replayed and replay.task_id == old.task_id
    assert isinstance(conflict, IdempotencyConflict)
    assert a_again.replayed and a_again.task_id == a.task_id
    assert [_audited(pg_app, t.task_id) for t in (a, b)] == [1, 1]
    assert batcher.batches == 2  # one by the event loop, then the known keys by the thread
    assert _audited(pg_app, specs[4].task_id) == 0 and _audited(pg_app, old.task_id) == 0


def test_batcher_gives_a_batch_the_event_loop_could_not_write_to_the_thread(
    pg_app: Creep, monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def broken(*_: Any) -> Any:
        raise StorageError("connection lost")

    batcher = _batcher(pg_app)
    assert batcher._inserter is not None
    monkeypatch.setattr(batcher._inserter, "insert_new", broken)
    specs = [_spec(pg_app, f"k{i}") for i in range(5)]
    out = asyncio.run(_create_all(batcher, pg_app, specs))
    assert [t.task_id for t in out] == [s.task_id for s in specs]
    assert not any(t.replayed for t in out)
    assert [_audited(pg_app, s.task_id) for s in specs] == [1] * 5
    assert batcher.batches == 1



def test_batcher_leaves_a_client_task_id_twice_to_the_thread(pg_app: Creep) -> None:
    """Two requests naming the same task id (a client's retry race; without a key the id is
    the key): the first creates it, the second is refused, and one audit row is written."""
    first = _spec(pg_app, "", task_id="0190a0f0-0000-7000-8000-000000000001", priority=1)
    second = _spec(pg_app, "", task_id=first.task_id, priority=9)
    batcher = _batcher(pg_app)
    out = asyncio.run(_create_all(batcher, pg_app, [first, second]))
    assert not out[0].replayed and out[0].priority == 1
    assert isinstance(out[1], IdempotencyConflict)
    assert pg_app.get_task(first.task_id).priority == 1
    assert pg_app.get_task(first.task_id).input_payload == first.input_payload
    assert _audited(pg_app, first.task_id) == 1


def test_batcher_writes_a_batch_with_a_quota_check_on_the_thread(
    pg_app: Creep, monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[int] = []
    batcher = _batcher(pg_app)
    assert batcher._inserter is not None
    real = batcher._inserter.insert_new

    async def counted(*args: Any) -> Any:
        calls.append(1)
        return await real(*args)

    monkeypatch.setattr(batcher._inserter, "insert_new", counted)
    specs = [_spec(pg_app, f"q{i}") for i in range(3)]
    limits = TenantLimits(rate_per_second=0, burst=0, max_active_tasks=2)

    async def create() -> list[Any]:
        try:
            return await asyncio.gather(*(
                batcher.create(s, [*quota_writes(limits, "t1", [s.task_id]), _audit(pg_app, s)])
                for s in specs), return_exceptions=True)
        finally:
            await batcher.aclose()

    out = asyncio.run(create())
    assert calls == []  # the quota check belongs to the thread's transaction
    assert sum(1 for t in out if not isinstance(t, BaseException)) == 2
    assert sum(1 for t in out if isinstance(t, BaseException)) == 1


def test_inserter_pauses_after_a_connection_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    """PostgreSQL unreachable: one batch waits for a connection, the next ones go to the
    thread at once until the pause ends; a closed inserter never reopens its pool."""
    monkeypatch.setattr(postgres_async, "_CONNECT_TIMEOUT_S", 0.3)
    now = datetime.now(UTC)
    spec = validate_task_spec({"task_type": "A", "tenant_id": "t1"}, now=now)

    async def attempts() -> list[float]:
        inserter = postgres_async.PostgresAsyncInserter(
            "postgresql://127.0.0.1:1/nowhere?connect_timeout=1", lambda: None)
        took = []
        try:
            for _ in range(3):
                started = time.monotonic()
                with pytest.raises(StorageError):
                    await inserter.insert_new([spec], _built([spec], now), now, [])
                took.append(time.monotonic() - started)
        finally:
            await inserter.aclose()
        with pytest.raises(StorageError, match="closed"):
            await inserter.insert_new([spec], _built([spec], now), now, [])
        assert inserter._pool is None
        return took

    took = asyncio.run(attempts())
    assert took[0] >= 0.25 and took[1] < 0.05 and took[2] < 0.05, took


def test_batcher_fails_waiting_requests_when_its_writer_is_cancelled(
    pg_app: Creep, monkeypatch: pytest.MonkeyPatch,
) -> None:
    started = asyncio.Event()

    async def stuck(*_: Any) -> Any:
        started.set()
        await asyncio.sleep(60)

    batcher = _batcher(pg_app)
    assert batcher._inserter is not None
    monkeypatch.setattr(batcher._inserter, "insert_new", stuck)
    specs = [_spec(pg_app, f"c{i}") for i in range(3)]

    async def run() -> list[Any]:
        waiting = [asyncio.ensure_future(batcher.create(s, [_audit(pg_app, s)])) for s in specs]
        await started.wait()
        assert batcher._drainer is not None
        batcher._drainer.cancel()
        out = await asyncio.gather(*waiting, return_exceptions=True)
        await batcher.aclose()
        return out

    out = asyncio.run(asyncio.wait_for(run(), 10))
    assert all(isinstance(x, StorageError) for x in out), out
