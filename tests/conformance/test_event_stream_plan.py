"""PostgreSQL's stream of every task's events (Creep.events_after without task_id, the
metrics fold) reads in cursor order, (txid, event_id), straight off an index: a page costs
its own rows, not a walk and sort of every event after the cursor."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from creep import Creep
from tests.conformance.test_claim_plan import _explain_matching, _plan_nodes
from tests.conftest import wait_until


def _stream_plans(
    app: Creep, monkeypatch: pytest.MonkeyPatch, **query: Any
) -> tuple[list[Any], list[dict[str, Any]]]:
    plans: list[dict[str, Any]] = []
    _explain_matching(monkeypatch, lambda q: "FROM task_events" in q and "txid <" in q, plans)
    events = app.events_after(**query)
    monkeypatch.undo()
    assert len(plans) == 1, "the stream's statement was not seen"
    return events, _plan_nodes(plans[0])


def test_the_stream_is_ordered_by_transaction_id_as_a_number(
    pg_schema_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The statement selected txid::text, whose output column is named txid: ORDER BY txid
    sorted by that text, so a page across a power of ten (txid 99999, then 100000) came back
    as 100000 ... 99999 and the next page, after cursor 99999.x, skipped or repeated events.
    In number order an index gives the rows and the page reads no more than it returns."""
    app = Creep(pg_schema_url)
    app.submit_many([{"task_type": "X"} for _ in range(3_000)])
    with psycopg.connect(pg_schema_url, autocommit=True) as conn:
        conn.execute("ANALYZE task_events")
    # The stream stops before any transaction still open anywhere in the cluster (another
    # test's, running beside this one): wait until the horizon has passed these events.
    assert wait_until(lambda: len(app.events_after(limit=100)) == 100, 30.0)
    events, nodes = _stream_plans(app, monkeypatch, limit=100)
    assert len(events) == 100
    assert [n["Sort Key"] for n in nodes if n["Node Type"] == "Sort"] == []
    scans = [n for n in nodes if n.get("Relation Name") == "task_events"]
    assert scans and all(n["Actual Rows"] <= 100 for n in scans), nodes
    app.close()
