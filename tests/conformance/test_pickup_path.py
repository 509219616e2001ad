"""The PostgreSQL single-submit and claim fast paths (one autocommit statement; a pipelined
claim transaction) keep the general paths' guarantees."""

from __future__ import annotations

from typing import Any

import pytest

from creep import Creep
from creep.domain.errors import StorageError
from creep.domain.task import TaskStatus
from creep.storage.postgres_store import PostgresStore


@pytest.fixture
def pg_app(pg_schema_url: str) -> Any:
    app = Creep(pg_schema_url)
    yield app
    app.close()


def test_single_submit_writes_events_and_wakes(pg_app: Creep) -> None:
    store = pg_app.store
    assert isinstance(store, PostgresStore)
    woken: list[str] = []
    store.subscribe(lambda channel, payload: woken.append(channel))
    task = pg_app.submit(task_type="A", idempotency_key="k1", input_payload={"n": 1})
    assert task.status is TaskStatus.QUEUED and not task.replayed
    events = [e.event_type for e in pg_app.task_events(task.task_id)]
    assert events == ["created", "queued"]
    assert woken == ["creep_tasks"]
    again = pg_app.submit(task_type="A", idempotency_key="k1", input_payload={"n": 1})
    assert again.task_id == task.task_id and again.replayed
    assert len(pg_app.task_events(task.task_id)) == 2
    # The connection went back to the pool in transaction mode: a later write transaction
    # (a claim, then a plain update) still commits and rolls back as a unit.
    with store.pool.connection() as conn:
        assert not conn.autocommit


def test_claim_failing_midway_keeps_nothing(pg_app: Creep, monkeypatch: Any) -> None:
    store = pg_app.store
    assert isinstance(store, PostgresStore)
    task = pg_app.submit(task_type="A", input_payload={})

    def boom(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("matching failed")

    monkeypatch.setattr(store, "_claim_hinted_rows", boom)
    with pytest.raises(RuntimeError):
        store.task_claim("w1", ["A"], 10, pg_app.clock.now(), 60)
    monkeypatch.undo()
    assert pg_app.get_task(task.task_id).status is TaskStatus.QUEUED
    claimed = store.task_claim("w1", ["A"], 10, pg_app.clock.now(), 60)
    assert [c.task_id for c in claimed] == [task.task_id]
    assert pg_app.get_task(task.task_id).status is TaskStatus.RUNNING
    with store.pool.connection() as conn:
        assert not conn.autocommit


def test_claim_statement_error_is_a_storage_error(pg_app: Creep) -> None:
    store = pg_app.store
    assert isinstance(store, PostgresStore)
    pg_app.submit(task_type="A", input_payload={})
    with store.pool.connection() as conn:
        conn.execute("ALTER TABLE task_events RENAME TO task_events_gone")
        conn.commit()
    try:
        with pytest.raises(StorageError):
            store.task_claim("w1", ["A"], 10, pg_app.clock.now(), 60)
    finally:
        with store.pool.connection() as conn:
            conn.execute("ALTER TABLE task_events_gone RENAME TO task_events")
            conn.commit()
    assert len(store.task_claim("w1", ["A"], 10, pg_app.clock.now(), 60)) == 1
