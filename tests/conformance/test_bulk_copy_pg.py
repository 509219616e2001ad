"""PostgreSQL bulk submission: chunks prepared ahead (their new tasks and COPY data built on
the builder thread) are written as a plain submission's would be, wake workers in other
processes, and fall back to replaying per key when some of their keys exist already.
(task_queue is checked against tasks after every PostgreSQL test: tests/conftest.py.)"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

import creep.app as app_module
from creep import Creep
from creep.bulk_submit import _ramped_bounds
from creep.domain.errors import IdempotencyConflict
from creep.storage import pending_writes
from creep.storage.postgres_store import PostgresStore

#: The app's connections carry this name, so that the test can tell its notifications from
#: those of anything else using the same database at the time.
NAME = "creep-bulk-copy-test"
#: Chunks of 64, 128, 204 and 204 orders for 600 (bulk_submit._ramped_bounds): every one at
#: least COPY_MIN_TASKS, so every one is prepared.
CHUNK, N = 256, 600
SIZES = [64, 128, 204, 204]


@pytest.fixture
def app(pg_schema_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Creep]:
    monkeypatch.setattr(app_module, "SUBMIT_CHUNK", CHUNK)
    sep = "&" if "?" in pg_schema_url else "?"
    creep_app = Creep(f"{pg_schema_url}{sep}application_name={NAME}")
    yield creep_app
    creep_app.close()


@pytest.fixture
def prepared_outcomes(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """For each prepared chunk written: True when its COPY took it, False when it fell back."""
    seen: list[bool] = []
    create = PostgresStore._create_prepared

    def spy(self: PostgresStore, *args: Any) -> Any:
        out = create(self, *args)
        seen.append(out is not None)
        return out

    monkeypatch.setattr(PostgresStore, "_create_prepared", spy)
    return seen


def _orders(keys: range, prefix: str = "k") -> list[dict[str, Any]]:
    return [{"tenant_id": "t", "env": "prod", "idempotency_key": f"{prefix}{i}",
             "task_type": "A", "priority": i % 5, "input_payload": {"i": i}} for i in keys]


def test_prepared_chunks_are_stored_as_given_and_wake_other_processes(
    app: Creep, pg_schema_url: str, prepared_outcomes: list[bool]
) -> None:
    assert [b - a for a, b in _ramped_bounds(N, CHUNK, 2)] == SIZES
    orders = _orders(range(N))
    with psycopg.connect(pg_schema_url, autocommit=True) as listener:
        listener.execute("LISTEN creep_tasks")
        made = app.submit_many(orders)
        woken = {n.pid for n in listener.notifies(timeout=1)}
        ours = {row[0] for row in listener.execute(
            "SELECT pid FROM pg_stat_activity WHERE application_name = %s", (NAME,))}
    assert woken & ours, "a worker in another process must hear of the new tasks"
    assert prepared_outcomes == [True] * len(SIZES)  # no other path, which notifies too
    assert [t.idempotency_key for t in made] == [o["idempotency_key"] for o in orders]
    assert not any(t.replayed for t in made)
    for task in (made[0], made[63], made[64], made[N - 1]):
        assert app.get_task(task.task_id).to_dict() == task.to_dict()
        assert [e.event_type for e in app.task_events(task.task_id)] == ["created", "queued"]
    assert len(app.list_tasks(limit=2000)) == N


def test_a_prepared_chunk_with_existing_keys_replays_them(
    app: Creep, prepared_outcomes: list[bool]
) -> None:
    first = app.submit_many(_orders(range(N)))
    prepared_outcomes.clear()
    # Keys 450-1049: the first chunk (64) holds known keys only, the second (128) 86 known
    # and 42 new ones, the other two only new ones.
    again = app.submit_many(_orders(range(450, 450 + N)))
    assert sorted(prepared_outcomes) == [False, False, True, True]
    assert [t.task_id for t in again[:150]] == [t.task_id for t in first[450:]]
    assert all(t.replayed for t in again[:150]) and not any(t.replayed for t in again[150:])
    assert len(app.list_tasks(limit=2000)) == 450 + N
    for task in (again[0], again[150], again[N - 1]):
        assert app.get_task(task.task_id).task_id == task.task_id
        assert [e.event_type for e in app.task_events(task.task_id)] == ["created", "queued"]


class _Mark:
    """A write riding along with the submission's transactions (as the API's audit rows do)."""

    def apply(self, store: Any, conn: Any) -> bool:
        conn.execute("INSERT INTO riding_marks VALUES (1)")
        return True


def test_writes_riding_along_are_not_kept_when_the_submission_fails(app: Creep) -> None:
    """With writes riding along, chunks are written one after another in the general path:
    a conflict in the first chunk keeps neither its tasks nor the riding write."""
    with app.store.pool.connection() as conn:  # type: ignore[attr-defined]
        conn.execute("CREATE TABLE riding_marks (x int)")
    app.submit(tenant_id="t", env="prod", task_type="A", idempotency_key="taken", priority=1)
    orders = _orders(range(N))
    orders[10] = {**orders[10], "idempotency_key": "taken", "priority": 2}
    with pending_writes.riding(_Mark()), pytest.raises(IdempotencyConflict):
        app.submit_many(orders)
    with app.store.pool.connection() as conn:  # type: ignore[attr-defined]
        row = conn.execute("SELECT count(*) FROM riding_marks").fetchone()
    assert row is not None and row[0] == 0
    assert len(app.list_tasks(limit=2000)) == 1
