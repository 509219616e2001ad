"""The PostgreSQL claim stays independent of how many finished tasks are stored: the rows it
updates are found by primary-key lookups, never by walking every task ever stored."""

from __future__ import annotations

import json
from typing import Any

import psycopg
import pytest

from creep import Creep


def _plan_nodes(node: dict[str, Any]) -> list[dict[str, Any]]:
    out = [node]
    for child in node.get("Plans", []):
        out.extend(_plan_nodes(child))
    return out


def _explain_matching(
    monkeypatch: pytest.MonkeyPatch, matches: Any, plans: list[dict[str, Any]]
) -> None:
    """From now until monkeypatch.undo(), every statement `matches(query)` accepts is run
    once more as EXPLAIN ANALYZE first (same transaction, planner settings and parameters;
    rolled back) and its plan appended to `plans`."""
    execute = psycopg.Connection.execute

    def explaining(self: psycopg.Connection[Any], query: Any, *args: Any, **kw: Any) -> Any:
        if isinstance(query, str) and matches(query):
            self.execute("SAVEPOINT explain_plan")
            row = execute(self, "EXPLAIN (ANALYZE, FORMAT JSON) " + query, *args, **kw).fetchone()
            self.execute("ROLLBACK TO SAVEPOINT explain_plan")
            assert row is not None
            doc = row[0] if not isinstance(row[0], str) else json.loads(row[0])
            plans.append(doc[0]["Plan"])
        return execute(self, query, *args, **kw)

    monkeypatch.setattr(psycopg.Connection, "execute", explaining)


def _successes(app: Creep, claimed: list[Any]) -> list[Any]:
    """A SUCCEEDED completion of each claimed task."""
    from creep.domain.outcomes import Outcome, OutcomeKind, resolve
    from creep.ports import Completion

    comps = []
    for c in claimed:
        o = Outcome(c.task.task_id, c.claim_token, OutcomeKind.SUCCEEDED, result=None)
        comps.append(Completion(o, resolve(o, attempt=1, max_attempts=3, now=app.clock.now(),
                                           backoff=app.backoff)))
    return comps


def test_claim_looks_up_picked_rows_by_key(
    pg_schema_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = Creep(pg_schema_url)
    store = app.store
    # History: finished tasks the claim must not walk (cancelled in one statement, for speed),
    # and a long queue: the shape in which the planner merge-joined the picked rows against
    # a walk of the whole primary key.
    app.submit_many([{"task_type": "OLD", "input_payload": {"i": i}} for i in range(5_000)])
    with psycopg.connect(pg_schema_url, autocommit=True) as conn:
        conn.execute("UPDATE tasks SET status = 'CANCELLED' WHERE task_type = 'OLD'")
    app.submit_many([{"task_type": "NEW", "priority": i % 100} for i in range(15_000)])
    with psycopg.connect(pg_schema_url, autocommit=True) as conn:
        conn.execute("ANALYZE tasks")

    plans: list[dict[str, Any]] = []
    _explain_matching(monkeypatch, lambda q: q.lstrip().startswith("WITH picked AS"), plans)
    claimed = store.task_claim("w", ["NEW"], 500, app.clock.now(), 60)
    monkeypatch.undo()
    assert len(claimed) == 500
    assert [c.task.priority for c in claimed][:3] == [99, 99, 99]
    assert plans, "the claim statement was not seen"
    nodes = _plan_nodes(plans[0])
    on_tasks = [n for n in nodes if n.get("Relation Name") == "tasks" and "Scan" in n["Node Type"]]
    assert on_tasks, nodes
    for n in on_tasks:
        # Every scan of tasks is bounded by an index condition or the runnable index; no
        # scan reads the whole table.
        assert n["Actual Rows"] * n.get("Actual Loops", 1) <= 1000, n
        assert "Merge" not in json.dumps([x["Node Type"] for x in nodes]), nodes
    app.close()


def test_heartbeat_and_completion_look_up_rows_by_key(
    pg_schema_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The heartbeat and the completion find their rows by primary-key probes, one per task,
    whatever the statistics say. Once psycopg prepared the completion, PostgreSQL planned it
    generically (the batch's size unknown) and, with statistics that saw no RUNNING task, read
    tasks_running and nested-loop-joined every running task against the whole batch; a merge
    or hash join would walk all of tasks."""
    app = Creep(pg_schema_url)
    store = app.store
    app.submit_many([{"task_type": "NEW", "priority": i % 100} for i in range(3_000)])
    with psycopg.connect(pg_schema_url, autocommit=True) as conn:
        conn.execute("ANALYZE tasks")  # statistics from before any task ran
    claimed = store.task_claim("w", ["NEW"], 500, app.clock.now(), 60)
    assert len(claimed) == 500

    plans: list[dict[str, Any]] = []
    comps = _successes(app, claimed)
    _explain_matching(monkeypatch, lambda q: q.lstrip().startswith(
        ("WITH o AS", "UPDATE tasks t SET claim_expires_at")), plans)
    beat = store.task_heartbeat(
        "w", [(c.task.task_id, c.claim_token) for c in claimed], app.clock.now(), 60
    )
    done = store.task_complete_many(comps, app.clock.now())
    monkeypatch.undo()
    assert not beat.lost and len(done) == 500
    assert len(plans) == 2, "the heartbeat or the completion statement was not seen"
    for plan in plans:
        _assert_probes_by_key(_plan_nodes(plan))
    app.close()


def _assert_probes_by_key(nodes: list[dict[str, Any]]) -> None:
    on_tasks = [n for n in nodes if n.get("Relation Name") == "tasks" and "Scan" in n["Node Type"]]
    assert [(n["Node Type"], n.get("Index Name")) for n in on_tasks] == [
        ("Index Scan", "tasks_pkey")], nodes
    for n in nodes:
        assert n["Node Type"] not in ("Hash Join", "Merge Join"), nodes
        # No node handles more rows than the batch: nothing is rescanned.
        assert n["Actual Rows"] * n.get("Actual Loops", 1) <= 500, n


def test_heartbeat_and_settle_read_leases_by_task_key(
    pg_schema_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A heartbeat (looking for revoked leases) and a completion (settling leases) read the
    claims' leases through the by-task index, one probe per claim, on a leases table never
    analyzed (a new deployment's first minutes). Asked as `task_id = ANY(...)`, the planner
    read every lease ever taken: the heartbeat by a sequential scan (14 ms per 250 tasks at
    20,000 leases, growing with the history), the completion through the by-asset index
    (22 ms)."""
    app = Creep(pg_schema_url)
    store = app.store
    [asset] = app.import_assets([{"sku_category": "NET", "sku_code": "net.1",
                                     "max_concurrency": 500}])
    with psycopg.connect(pg_schema_url, autocommit=True) as conn:
        conn.execute(  # history: leases of finished tasks, on the asset the new ones lease
            "INSERT INTO leases (lease_id, tenant_id, task_id, asset_id, status, acquired_at, "
            "released_at, cost, currency, claim_token, hint_index) "
            "SELECT gen_random_uuid(), 'default', gen_random_uuid(), %s, 'RELEASED', now(), "
            "now(), 0, 'USD', gen_random_uuid(), 0 FROM generate_series(1, 20000)",
            (asset.asset_id,),
        )
    app.submit_many([{"task_type": "NEW", "resource_hints": [{"sku_category": "NET"}]}
                     for _ in range(250)])
    claimed = store.task_claim("w", ["NEW"], 250, app.clock.now(), 60)
    assert len(claimed) == 250 and all(c.task.lease_ids for c in claimed)

    plans: list[dict[str, Any]] = []
    comps = _successes(app, claimed)
    _explain_matching(
        monkeypatch, lambda q: q.startswith("SELECT l.") and " leases l " in q, plans)
    beat = store.task_heartbeat(
        "w", [(c.task.task_id, c.claim_token) for c in claimed], app.clock.now(), 60
    )
    done = store.task_complete_many(comps, app.clock.now())
    monkeypatch.undo()
    assert not beat.lost and not beat.revoked and len(done) == 250
    assert len(plans) == 2, "the heartbeat's or the settle's read of the leases was not seen"
    for plan in plans:
        nodes = _plan_nodes(plan)
        on_leases = [n for n in nodes if n.get("Relation Name") == "leases"]
        assert [(n["Node Type"], n.get("Index Name")) for n in on_leases] == [
            ("Index Scan", "leases_task")], nodes
        for n in nodes:  # nothing walks the history
            assert n["Actual Rows"] * n.get("Actual Loops", 1) \
                + n.get("Rows Removed by Filter", 0) <= 1000, n
    assert [a.current_concurrency for a in app.list_assets()] == [0]
    app.close()
