"""PostgreSQL: a plain claim commits without waiting for its WAL flush (README, "Storage");
nothing else does. The setting is transaction-local, so no later transaction of the pooled
connection inherits it: completions, retries and submits stay synchronous."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from creep import Creep
from creep.domain.outcomes import Outcome, OutcomeKind, resolve
from creep.domain.task import TaskStatus
from creep.ports import Completion
from creep.storage import pending_writes
from creep.storage.postgres_store import PostgresStore


@pytest.fixture
def pg_app(pg_schema_url: str) -> Any:
    # One pooled connection: every transaction below runs on the connection the claim used.
    app = Creep(f"{pg_schema_url}&pool_min=1&pool_max=1")
    yield app
    app.close()


def _store(app: Creep) -> PostgresStore:
    assert isinstance(app.store, PostgresStore)
    return app.store


def _setting(conn: psycopg.Connection[Any]) -> str:
    row = conn.execute("SELECT current_setting('synchronous_commit')").fetchone()
    assert row is not None
    return str(row[0])


def _spy_claim(store: PostgresStore, monkeypatch: Any, seen: list[str]) -> None:
    """Record synchronous_commit inside each claim transaction (the hinted step runs there)."""
    original = store._claim_hinted_rows

    def spy(conn: psycopg.Connection[Any], *args: Any) -> Any:
        seen.append(_setting(conn))
        return original(conn, *args)

    monkeypatch.setattr(store, "_claim_hinted_rows", spy)


def _success(app: Creep, claimed: Any) -> Completion:
    outcome = Outcome(claimed.task_id, claimed.claim_token, OutcomeKind.SUCCEEDED, result=None)
    return Completion(outcome, resolve(outcome, attempt=claimed.attempt, max_attempts=4,
                                       now=app.clock.now(), backoff=app.backoff))


def test_claim_commits_async_and_nothing_inherits_it(pg_app: Creep, monkeypatch: Any) -> None:
    store = _store(pg_app)
    seen: list[str] = []
    _spy_claim(store, monkeypatch, seen)
    first = pg_app.submit(task_type="A", input_payload={})
    second = pg_app.submit(task_type="A", input_payload={})
    claimed = store.task_claim("w1", ["A"], 1, pg_app.clock.now(), 60)
    assert [c.task_id for c in claimed] == [first.task_id]
    assert seen == ["off"]
    with store.pool.connection() as conn:  # the same (only) connection, next transaction
        assert _setting(conn) == "on"
        conn.rollback()

    # A completion that claims the next task in the same transaction stays synchronous.
    seen.clear()
    _, more = store.task_complete_and_claim(
        [_success(pg_app, claimed[0])], "w1", ["A"], 1, pg_app.clock.now(), 60)
    assert [c.task_id for c in more] == [second.task_id]
    assert seen == ["on"]
    assert pg_app.get_task(first.task_id).status is TaskStatus.SUCCESS

    # So does a completion on its own, right after an async claim on the same connection.
    third = pg_app.submit(task_type="A", input_payload={})
    seen.clear()
    last = store.task_claim("w1", ["A"], 1, pg_app.clock.now(), 60)
    assert [c.task_id for c in last] == [third.task_id] and seen == ["off"]
    in_completion: list[str] = []
    original_apply = store._apply

    def apply_spy(conn: psycopg.Connection[Any], *args: Any) -> Any:
        in_completion.append(_setting(conn))
        return original_apply(conn, *args)

    monkeypatch.setattr(store, "_apply", apply_spy)
    store.task_complete_many([_success(pg_app, more[0]), _success(pg_app, last[0])],
                             pg_app.clock.now())
    assert in_completion == ["on"]
    assert pg_app.get_task(third.task_id).status is TaskStatus.SUCCESS


def test_claim_failing_midway_leaves_the_connection_synchronous(
    pg_app: Creep, monkeypatch: Any
) -> None:
    store = _store(pg_app)
    task = pg_app.submit(task_type="A", input_payload={})

    def boom(conn: psycopg.Connection[Any], *args: Any) -> Any:
        assert _setting(conn) == "off"
        raise RuntimeError("matching failed")

    monkeypatch.setattr(store, "_claim_hinted_rows", boom)
    with pytest.raises(RuntimeError):
        store.task_claim("w1", ["A"], 10, pg_app.clock.now(), 60)
    monkeypatch.undo()
    with store.pool.connection() as conn:
        assert _setting(conn) == "on"
        conn.rollback()
    assert pg_app.get_task(task.task_id).status is TaskStatus.QUEUED


class _Recorder:
    """A write that rides along with the next write transaction (as the API's audit row)."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    def apply(self, store: Any, conn: Any) -> bool:
        self.seen.append(_setting(conn))
        return True


def test_claim_carrying_other_writes_stays_synchronous(pg_app: Creep) -> None:
    store = _store(pg_app)
    task = pg_app.submit(task_type="A", input_payload={})
    write = _Recorder()
    with pending_writes.riding(write):
        claimed = store.task_claim("w1", ["A"], 10, pg_app.clock.now(), 60)
    assert [c.task_id for c in claimed] == [task.task_id]
    assert write.seen == ["on"]


def test_claim_that_leases_or_refuses_a_budget_stays_synchronous(
    pg_app: Creep, monkeypatch: Any
) -> None:
    """Leases, their ledger charges and BUDGET_EXCEEDED failures are written by the hinted
    step of a claim: a transaction carrying them commits synchronously."""
    store = _store(pg_app)
    after: list[str] = []
    original = store._claim_hinted_rows

    def spy(conn: psycopg.Connection[Any], *args: Any) -> Any:
        rows = original(conn, *args)
        after.append(_setting(conn))
        return rows

    monkeypatch.setattr(store, "_claim_hinted_rows", spy)
    pg_app.create_asset(sku_category="RAW_NET", sku_code="ip.uk.1", cost_per_lease="2.00",
                        max_concurrency=5)
    hints = [{"sku_category": "RAW_NET"}]
    leased = pg_app.submit(task_type="L", resource_hints=hints)
    claimed = store.task_claim("w1", ["L"], 1, pg_app.clock.now(), 60)
    assert [c.task_id for c in claimed] == [leased.task_id] and after == ["on"]

    refused = pg_app.submit(task_type="B", resource_hints=hints, max_total_cost="1.00")
    after.clear()
    assert store.task_claim("w1", ["B"], 1, pg_app.clock.now(), 60) == []
    assert after == ["on"]
    assert pg_app.get_task(refused.task_id).result_code == "BUDGET_EXCEEDED"

    plain = pg_app.submit(task_type="P", input_payload={})
    after.clear()
    assert [c.task_id for c in store.task_claim("w1", ["P"], 1, pg_app.clock.now(), 60)] == [
        plain.task_id]
    assert after == ["off"]  # nothing hinted was written: the plain claim stays async


def test_url_options_with_several_settings_reach_the_server(pg_schema_url: str) -> None:
    """`options=-c a=1 -c b=2` (spaces as %20) arrives whole: a '+' would reach libpq as a
    literal plus and break the first setting."""
    from urllib.parse import quote

    url = pg_schema_url.replace("options=", "options=" + quote("-cstatement_timeout=4321 "), 1)
    app = Creep(url)
    try:
        with _store(app).pool.connection() as conn:
            assert _setting_of(conn, "statement_timeout") == "4321ms"
            assert _setting_of(conn, "search_path") == pg_schema_url.rpartition("%3D")[2]
        app.submit(tenant_id="t", env="e", task_type="X")  # the schema from search_path
    finally:
        app.close()


def _setting_of(conn: psycopg.Connection[Any], name: str) -> str:
    row = conn.execute("SELECT current_setting(%s)", (name,)).fetchone()
    assert row is not None
    return str(row[0])
