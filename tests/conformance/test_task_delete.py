"""Soft delete of tasks through the Python API (seed 004's `is_deleted`, a recycle bin):
app.delete_task / app.restore_task, the deleted list, what a deleted task refuses, retention,
and deletes racing retries and cancels. Both backends (the conformance `app`/`db_url`)."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest

from creep import (
    ConflictError,
    Creep,
    FrozenClock,
    NotFound,
    TaskDeleted,
    TaskUnfinished,
    ValidationError,
    VersionConflict,
)
from creep.domain.task import TaskOrder
from tests.conftest import blocked_by, wait_until


def _finished(app: Creep, **fields: Any) -> TaskOrder:
    """A CANCELLED task (finished without a worker)."""
    task = app.submit(**{"task_type": "T", **fields})
    return app.cancel(task.task_id)


def _events(app: Creep, task_id: str) -> list[str]:
    return [e.event_type for e in app.task_events(task_id)]


def test_delete_a_finished_task_keeps_it_readable_out_of_the_list(
    app: Creep, clock: FrozenClock
) -> None:
    task = _finished(app)
    clock.advance(5)
    deleted = app.delete_task(task.task_id)
    assert deleted.deleted_at == clock.now()
    assert deleted.task_version == task.task_version + 1
    assert deleted.updated_at == clock.now()
    assert deleted.status == "CANCELLED"  # not a status change
    assert app.get_task(task.task_id) == deleted
    events = app.task_events(task.task_id)
    assert events[-1].event_type == "deleted"
    assert (events[-1].from_status, events[-1].to_status) == ("CANCELLED", "CANCELLED")
    # Out of the list, into the deleted one.
    assert task.task_id not in {t.task_id for t in app.list_tasks()}
    assert [t.task_id for t in app.list_tasks(deleted=True)] == [task.task_id]
    assert task.task_id not in {t.task_id for t in app.list_tasks(deleted=False)}

    # Again: the task as it is, nothing written.
    clock.advance(5)
    again = app.delete_task(task.task_id)
    assert again == deleted
    assert _events(app, task.task_id).count("deleted") == 1


@pytest.mark.parametrize("status", ["PENDING", "QUEUED", "RUNNING"])
def test_an_unfinished_task_is_not_deleted(app: Creep, clock: FrozenClock, status: str) -> None:
    if status == "PENDING":
        task = app.submit(task_type="T", run_after=timedelta(hours=1))
    else:
        task = app.submit(task_type="T")
    if status == "RUNNING":
        [claimed] = app.store.task_claim("w", ["T"], 1, clock.now(), 60)
        task = claimed.task
    assert task.status == status
    with pytest.raises(TaskUnfinished) as refused:
        app.delete_task(task.task_id)
    assert isinstance(refused.value, ConflictError)
    assert status in refused.value.message and "cancel it first" in refused.value.message
    assert app.get_task(task.task_id) == task
    assert "deleted" not in _events(app, task.task_id)


def test_a_deleted_task_refuses_cancel_retry_and_update_until_restored(
    app: Creep, clock: FrozenClock
) -> None:
    task = _finished(app)
    deleted = app.delete_task(task.task_id)
    for change in (lambda: app.retry(task.task_id), lambda: app.cancel(task.task_id),
                   lambda: app.update_task(task.task_id, deleted.task_version, priority=9)):
        with pytest.raises(TaskDeleted) as refused:
            change()
        assert "deleted" in refused.value.message and "restore" in refused.value.message
    assert app.get_task(task.task_id) == deleted

    clock.advance(1)
    restored = app.restore_task(task.task_id)
    assert restored.deleted_at is None
    assert restored.task_version == deleted.task_version + 1
    assert restored.updated_at == clock.now()
    assert _events(app, task.task_id)[-2:] == ["deleted", "restored"]
    assert task.task_id in {t.task_id for t in app.list_tasks()}
    assert app.list_tasks(deleted=True) == []
    # Restoring what is not deleted answers it as it is.
    assert app.restore_task(task.task_id) == restored
    assert _events(app, task.task_id).count("restored") == 1
    assert app.retry(task.task_id).status == "QUEUED"


def test_a_deleted_task_is_unknown_to_new_dependencies(app: Creep) -> None:
    """A new order cannot depend on a task in the recycle bin: the same ValidationError as
    an unknown id, naming depends_on, by submit and submit_many; nothing is written. Once
    restored, it can be named again."""
    task = _finished(app)
    app.delete_task(task.task_id)
    tid = task.task_id
    with pytest.raises(ValidationError) as refused:
        app.submit(task_type="T", depends_on=[tid])
    # One order: its own field, as a bad priority is named (no `tasks[0].`).
    assert refused.value.errors == [("depends_on[0]", f"unknown task id {tid}")]
    with pytest.raises(ValidationError) as refused:
        app.submit_many([{"task_type": "T"}, {"task_type": "T", "depends_on": [tid]}])
    assert refused.value.errors == [("tasks[1].depends_on[0]", f"unknown task id {tid}")]
    assert app.list_tasks() == []
    assert _events(app, tid)[-1] == "deleted"

    app.restore_task(tid)
    dependant = app.submit(task_type="T", depends_on=[tid])
    assert dependant.depends_on == [tid] and dependant.status == "CANCELLED"


def test_an_order_resent_after_its_dependency_was_deleted_replays(app: Creep) -> None:
    """The idempotency key still answers a resend: an order written while its dependency
    was live, sent again after the dependency went to the recycle bin, replays the task
    written then (it is not a new dependant); new orders beside it are created, and a new
    order naming the deleted task is still refused."""
    dep = _finished(app)
    first = app.submit(task_type="T", idempotency_key="kb", depends_on=[dep.task_id])
    app.delete_task(dep.task_id)
    again = app.submit(task_type="T", idempotency_key="kb", depends_on=[dep.task_id])
    assert again.replayed and again.task_id == first.task_id
    other = _finished(app)
    both = app.submit_many([
        {"task_type": "T", "idempotency_key": "kc", "depends_on": [other.task_id]},
        {"task_type": "T", "idempotency_key": "kb", "depends_on": [dep.task_id]},
    ])
    assert [t.replayed for t in both] == [False, True]
    assert both[1].task_id == first.task_id
    assert app.get_task(both[0].task_id).depends_on == [other.task_id]
    with pytest.raises(ValidationError) as refused:
        app.submit_many([
            {"task_type": "T", "idempotency_key": "kb", "depends_on": [dep.task_id]},
            {"task_type": "T", "idempotency_key": "kd", "depends_on": [dep.task_id]},
        ])
    assert refused.value.errors == [
        ("tasks[1].depends_on[0]", f"unknown task id {dep.task_id}")]
    assert len(app.list_tasks()) == 3  # first, other's dependant, other


def test_a_deleted_task_takes_no_ledger_entries_until_restored(app: Creep) -> None:
    """Money recorded against a task in the recycle bin is refused (TaskDeleted, nothing
    written); its entries are still listed and summed, and an entry written before the
    delete, sent again, still replays."""
    task = _finished(app)
    entry_id = str(uuid.uuid4())
    fields: dict[str, Any] = {"entry_type": "COST", "amount": "2.50", "currency": "USD",
                              "task_id": task.task_id}
    first = app.record_ledger_entry(entry_id=entry_id, **fields)
    app.delete_task(task.task_id)
    for entry_type in ("COST", "REVENUE", "REFUND", "ADJUSTMENT"):
        with pytest.raises(TaskDeleted) as refused:
            app.record_ledger_entry(**{**fields, "entry_type": entry_type})
        assert refused.value.task_id == task.task_id
        assert "restore" in refused.value.message
    assert app.record_ledger_entry(entry_id=entry_id, **fields) == first  # a resend
    assert app.ledger_entries(task_id=task.task_id) == [first]
    [summary] = app.ledger_summary(task_id=task.task_id)
    assert summary.cost == Decimal("2.50")

    app.restore_task(task.task_id)
    app.record_ledger_entry(**fields)
    assert len(app.ledger_entries(task_id=task.task_id)) == 2


@pytest.mark.parametrize("write", ["dependant", "artifact", "ledger entry"])
def test_a_delete_committed_while_a_write_waits_on_the_task_refuses_it(
    pg_schema_url: str, tmp_path: Path, write: str
) -> None:
    """PostgreSQL: a new dependant, an artifact or a ledger entry of a task that a delete
    holds locked (FOR UPDATE, as app.delete_task does) waits for it, and once the delete
    commits is refused as for a deleted task, never written against it."""
    app = Creep(pg_schema_url, artifact_dir=tmp_path)
    holder = psycopg.connect(pg_schema_url)
    watcher = psycopg.connect(pg_schema_url, autocommit=True)
    try:
        task = _finished(app)
        staged = app.artifacts.stage(task.task_id, b"x", kind="log", file_name="x.log")
        writes: dict[str, Callable[[], Any]] = {
            "dependant": lambda: app.submit(task_type="T", depends_on=[task.task_id]),
            "artifact": lambda: app.store.artifact_create(staged),
            "ledger entry": lambda: app.record_ledger_entry(
                entry_type="COST", amount="1", currency="USD", task_id=task.task_id),
        }
        holder.execute("SELECT 1 FROM tasks WHERE task_id = %s FOR UPDATE", (task.task_id,))
        holder.execute("UPDATE tasks SET deleted_at = now() WHERE task_id = %s",
                       (task.task_id,))
        result: list[Any] = []

        def run() -> None:
            try:
                result.append(writes[write]())
            except Exception as exc:  # the refusal is the point
                result.append(exc)

        t = threading.Thread(target=run)
        t.start()
        assert wait_until(lambda: blocked_by(watcher, holder.info.backend_pid), 10.0)
        holder.commit()
        t.join(10.0)
        assert not t.is_alive()
        [out] = result
        expected = ValidationError if write == "dependant" else TaskDeleted
        assert isinstance(out, expected), repr(out)
        assert app.list_tasks() == []
        assert app.list_artifacts(task.task_id) == []
        assert app.ledger_entries(task_id=task.task_id) == []
    finally:
        holder.close()
        watcher.close()
        app.close()


def test_a_task_never_deleted_restores_to_itself(app: Creep) -> None:
    task = app.submit(task_type="T")
    before = _events(app, task.task_id)
    assert app.restore_task(task.task_id) == task
    assert _events(app, task.task_id) == before


def test_expected_version_guards_delete_and_restore(app: Creep) -> None:
    task = _finished(app)
    with pytest.raises(VersionConflict):
        app.delete_task(task.task_id, expected_version=task.task_version - 1)
    deleted = app.delete_task(task.task_id, expected_version=task.task_version)
    # Already deleted: the answer is the task, whatever version was named.
    assert app.delete_task(task.task_id, expected_version=1) == deleted
    with pytest.raises(VersionConflict):
        app.restore_task(task.task_id, expected_version=task.task_version)
    assert app.restore_task(task.task_id, expected_version=deleted.task_version).deleted_at \
        is None


def test_tenant_scope_and_unknown_tasks(app: Creep) -> None:
    task = _finished(app, tenant_id="a")
    with pytest.raises(NotFound):
        app.delete_task(task.task_id, tenant_id="b")
    with pytest.raises(NotFound):
        app.delete_task("0190b4a2-0000-7000-8000-000000000000")
    app.delete_task(task.task_id.upper(), tenant_id="a")  # any case names the task
    with pytest.raises(NotFound):
        app.restore_task(task.task_id, tenant_id="b")
    assert app.list_tasks(deleted=True, tenant_id="b") == []
    assert len(app.list_tasks(deleted=True, tenant_id="a")) == 1


def test_the_deleted_list_pages_like_the_list(app: Creep, clock: FrozenClock) -> None:
    ids = []
    for _ in range(5):
        clock.advance(1)
        ids.append(_finished(app, task_type="PAGED").task_id)
    _finished(app, task_type="PAGED")  # not deleted
    for task_id in ids:
        app.delete_task(task_id)
    seen: list[str] = []
    after = None
    while True:
        page = app.list_tasks(deleted=True, task_type="PAGED", after=after, limit=2)
        seen += [t.task_id for t in page]
        if len(page) < 2:
            break
        after = app.store.list_cursor(page[-1])
    assert seen == ids[::-1]  # newest first, each once
    assert app.list_tasks(deleted=True, status="CANCELLED", limit=100) != []
    assert app.list_tasks(deleted=True, status="SUCCESS") == []


def test_the_deleted_filter_is_a_boolean(app: Creep) -> None:
    with pytest.raises(ValidationError) as refused:
        app.list_tasks(deleted="yes")
    assert refused.value.errors == [("deleted", "must be true or false")]


def test_retention_purges_deleted_tasks_with_the_other_finished_ones(
    app: Creep, clock: FrozenClock
) -> None:
    kept = _finished(app)
    gone = _finished(app)
    clock.advance(days=29)
    app.delete_task(gone.task_id)  # deleted late: still purged by when it finished
    clock.advance(days=1, seconds=1)
    assert app.store.retention_purge_tasks(clock.now() - timedelta(days=30)) == 2
    for task in (kept, gone):
        with pytest.raises(NotFound):
            app.get_task(task.task_id)


def _race(first: Callable[[], Any], second: Callable[[], Any]) -> list[Any]:
    """Run both at once; each one's result or the exception it raised."""
    barrier = threading.Barrier(2)
    results: list[Any] = [None, None]

    def run(i: int, fn: Callable[[], Any]) -> None:
        barrier.wait()
        try:
            results[i] = fn()
        except Exception as exc:  # the race's loser raises: that is the point
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i, fn))
               for i, fn in enumerate((first, second))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return results


def test_a_delete_racing_a_retry_leaves_one_winner(app: Creep) -> None:
    """Both lock the task: either the retry queued it (the delete is refused: unfinished) or
    the delete won (the retry is refused: deleted). Never a deleted task in the queue."""
    outcomes = set()
    for _ in range(12):
        task = _finished(app)
        before = _events(app, task.task_id)
        tid = task.task_id
        deleted, retried = _race(lambda tid=tid: app.delete_task(tid),
                                 lambda tid=tid: app.retry(tid))
        now = app.get_task(task.task_id)
        events = _events(app, task.task_id)
        if isinstance(deleted, TaskOrder):
            assert isinstance(retried, TaskDeleted), retried
            assert now.deleted_at is not None and now.status == "CANCELLED"
            assert events == [*before, "deleted"]
            outcomes.add("delete")
        else:
            assert isinstance(deleted, TaskUnfinished), deleted
            assert isinstance(retried, TaskOrder), retried
            assert now.deleted_at is None and now.status == "QUEUED"
            assert events == [*before, "queued"]
            outcomes.add("retry")
        assert now.task_version == task.task_version + 1
    assert outcomes  # which one wins is up to the scheduler


def test_a_cancel_racing_a_delete_never_deletes_an_unfinished_task(app: Creep) -> None:
    for _ in range(12):
        task = app.submit(task_type="T")
        before = _events(app, task.task_id)
        tid = task.task_id
        cancelled, deleted = _race(lambda tid=tid: app.cancel(tid),
                                   lambda tid=tid: app.delete_task(tid))
        assert isinstance(cancelled, TaskOrder), cancelled
        now = app.get_task(task.task_id)
        assert now.status == "CANCELLED"
        if isinstance(deleted, TaskOrder):  # came second: deleted the cancelled task
            assert now.deleted_at is not None
            assert _events(app, task.task_id) == [*before, "cancelled", "deleted"]
        else:
            assert isinstance(deleted, TaskUnfinished), deleted
            assert now.deleted_at is None
            assert _events(app, task.task_id) == [*before, "cancelled"]


def test_the_recycle_bin_is_read_through_its_own_index(
    pg_schema_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Listing the bin (and counting it) read the whole task table on PostgreSQL: a tenant
    with thousands of tasks and a bin of five paid for every task. The bin's partial index
    (migration 0025) gives its rows and a page reads no more than the bin."""
    from tests.conformance.test_claim_plan import _explain_matching, _plan_nodes

    app = Creep(pg_schema_url)
    done = app.submit_many([{"task_type": "X", "tenant_id": "t1"} for _ in range(3_000)])
    ids = [t.task_id for t in done]
    for task_id in ids[:5]:
        app.cancel(task_id)
        app.delete_task(task_id)
    with psycopg.connect(pg_schema_url, autocommit=True) as conn:
        conn.execute("ANALYZE tasks")
    for filters in ({"tenant_id": "t1"}, {}):
        plans: list[dict[str, Any]] = []
        _explain_matching(monkeypatch, lambda q: "deleted_at IS NOT NULL" in q, plans)
        listed = app.list_tasks(deleted=True, **filters)
        monkeypatch.undo()
        assert sorted(t.task_id for t in listed) == sorted(ids[:5])
        assert len(plans) == 1, "the bin's statement was not seen"
        scans = [n for n in _plan_nodes(plans[0]) if n.get("Relation Name") == "tasks"]
        assert scans and all(n["Node Type"] != "Seq Scan" and n["Actual Rows"] <= 5
                             for n in scans), scans
    app.close()
