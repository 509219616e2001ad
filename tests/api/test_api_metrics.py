"""/metrics over HTTP against two real server processes on one database (SQLite and
PostgreSQL): the database-derived numbers are exact and the same on both nodes, never
counted once per node; the cache keeps scrapes off the database."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from creep.engine.metrics_fold import DURATION_BUCKETS
from tests.api.conftest import Server, _pg_schema, start_server, stop_server
from tests.conftest import require_postgres

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@pytest.fixture(params=["sqlite", "postgres"])
def nodes(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Server, Server]]:
    """Two API nodes on one fresh database, metrics read on every scrape."""
    drop = None
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path}/metrics.db"
    else:
        require_postgres()
        url, drop = _pg_schema()
    env = {"CREEP_METRICS_CACHE_SECONDS": "0", "CREEP_MAINTENANCE_INTERVAL_SECONDS": "0"}
    a = start_server(url, tmp_path / "a.log", **env)
    try:
        b = start_server(url, tmp_path / "b.log", **env)
        try:
            yield a, b
        finally:
            stop_server(b)
    finally:
        stop_server(a)
        if drop is not None:
            drop()


def scrape(server: Server) -> Samples:
    r = httpx.get(f"{server.url}/metrics", timeout=30)
    assert r.status_code == 200, r.text
    out: Samples = {}
    for family in text_string_to_metric_families(r.text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def pick(samples: Samples, prefix: str) -> Samples:
    """The samples of one metric, minus the per-process HTTP series."""
    return {k: v for k, v in samples.items() if k[0].startswith(prefix)}


def lbl(**labels: str) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(labels.items()))


def _submit(c: httpx.Client, task_type: str, **fields: Any) -> str:
    r = c.post("/v1/tasks", json={"task_type": task_type, **fields})
    assert r.status_code == 201, r.text
    return str(r.json()["task_id"])


def _claim(c: httpx.Client, task_type: str) -> dict[str, Any]:
    r = c.post("/v1/workers/claim", json={"task_types": [task_type], "max_tasks": 1})
    assert r.status_code == 200, r.text
    (item,) = r.json()["items"]
    return dict(item)


def _events(c: httpx.Client, task_id: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = c.get(f"/v1/tasks/{task_id}/events").json()["items"]
    return items


def _at(event: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(event["created_at"])


def _durations(c: httpx.Client, task_id: str) -> tuple[list[float], list[tuple[str, float]]]:
    """From the task's own events: claim-to-start waits and (status left for, run time)."""
    waits: list[float] = []
    runs: list[tuple[str, float]] = []
    queued_at = started_at = None
    for e in _events(c, task_id):
        if e["to_status"] == "QUEUED" and e["from_status"] != "QUEUED":
            queued_at = _at(e)
            if e["payload"].get("run_after"):
                queued_at = max(queued_at, datetime.fromisoformat(e["payload"]["run_after"]))
        if (e["from_status"], e["to_status"]) == ("QUEUED", "RUNNING"):
            assert queued_at is not None
            started_at = _at(e)
            waits.append(max(0.0, (started_at - queued_at).total_seconds()))
        elif e["from_status"] == "RUNNING" and e["to_status"] != "RUNNING":
            assert started_at is not None
            runs.append((e["to_status"], (_at(e) - started_at).total_seconds()))
    return waits, runs


def _histogram(name: str, labels: dict[str, str], values: list[float]) -> Samples:
    out: Samples = {}
    for bound in DURATION_BUCKETS:
        le = str(float(bound))
        out[(f"{name}_bucket", lbl(**labels, le=le))] = float(sum(v <= bound for v in values))
    out[(f"{name}_bucket", lbl(**labels, le="+Inf"))] = float(len(values))
    out[(f"{name}_count", lbl(**labels))] = float(len(values))
    out[(f"{name}_sum", lbl(**labels))] = sum(values)
    return out


def _approx(samples: Samples) -> dict[Any, Any]:
    return {k: pytest.approx(v, rel=1e-9, abs=1e-9) for k, v in samples.items()}


def _wait_for_count(server: Server, key: tuple[str, Any], want: float) -> Samples:
    """Scrape until `key` reaches `want` (on PostgreSQL the fold stops at the oldest open
    transaction, so the last events may show a moment later)."""
    deadline = time.monotonic() + 30
    while True:
        samples = scrape(server)
        if samples.get(key) == want or time.monotonic() > deadline:
            return samples
        time.sleep(0.1)


def test_metrics_are_exact_and_cluster_wide(nodes: tuple[Server, Server]) -> None:
    a, b = nodes
    _, key = a.tenant()
    with a.client(key) as ca, b.client(key) as cb:
        # Two nodes do the work: each task is counted once, whichever node saw it.
        ok = _submit(ca, "MA", priority=95)
        bad = _submit(cb, "MA")
        left = _submit(ca, "MA", priority=5)
        retried = _submit(cb, "MB", constraints={"max_retries": 2})
        item = _claim(ca, "MA")
        assert item["task"]["task_id"] == ok
        assert ca.post(f"/v1/tasks/{ok}/complete",
                       json={"claim_token": item["claim_token"]}).status_code == 200
        item = _claim(cb, "MA")
        assert item["task"]["task_id"] == bad
        assert cb.post(f"/v1/tasks/{bad}/fail", json={
            "claim_token": item["claim_token"], "kind": "failed"}).json()["status"] == "FAILED"
        item = _claim(ca, "MB")
        assert cb.post(f"/v1/tasks/{retried}/fail", json={
            "claim_token": item["claim_token"], "kind": "retry", "retry_delay": 0,
        }).json()["status"] == "QUEUED"
        item = _claim(cb, "MB")
        assert ca.post(f"/v1/tasks/{retried}/complete",
                       json={"claim_token": item["claim_token"]}).status_code == 200
        # An asset, a lease on it (a hinted task, claimed), and ledger entries.
        asset = ca.post("/v1/assets", json={"sku_category": "NET", "sku_code": "ip.1",
                                            "status": "READY", "cost_per_lease": "1.25",
                                            "currency": "USD"})
        assert asset.status_code == 201, asset.text
        ca.post("/v1/assets", json={"sku_category": "NET", "sku_code": "ip.2", "status": "NEW"})
        leased = _submit(ca, "ML", resource_hints=[{"sku_category": "NET"}])
        assert _claim(cb, "ML")["task"]["task_id"] == leased
        for amount in ("10.10", "0.20"):
            r = ca.post("/v1/ledger", json={"entry_type": "REVENUE", "amount": amount,
                                            "currency": "USD"})
            assert r.status_code == 201, r.text

        waits: dict[str, list[float]] = {"MA": [], "MB": []}
        runs: dict[tuple[str, str], list[float]] = {}
        for task_id, kind in ((ok, "MA"), (bad, "MA"), (retried, "MB")):
            w, rs = _durations(ca, task_id)
            waits[kind] += w
            for status, seconds in rs:
                runs.setdefault((kind, status), []).append(seconds)
        ml_waits, _ = _durations(ca, leased)

    created = ("creep_tasks_created_total", lbl(task_type="ML"))
    first = _wait_for_count(a, ("creep_task_claim_to_start_seconds_count",
                                lbl(task_type="ML")), 1.0)
    assert first[created] == 1.0
    second = scrape(b)
    for samples in (first, second):
        assert pick(samples, "creep_tasks_created") == {
            ("creep_tasks_created_total", lbl(task_type="MA")): 3.0,
            ("creep_tasks_created_total", lbl(task_type="MB")): 1.0,
            ("creep_tasks_created_total", lbl(task_type="ML")): 1.0,
        }
        finished = {k: v for k, v in pick(samples, "creep_tasks_finished").items()
                    if k[0].endswith("_total")}
        assert finished == {
            ("creep_tasks_finished_total", lbl(task_type="MA", status="SUCCESS")): 1.0,
            ("creep_tasks_finished_total", lbl(task_type="MA", status="FAILED")): 1.0,
            ("creep_tasks_finished_total", lbl(task_type="MB", status="SUCCESS")): 1.0,
        }
        want: Samples = {}
        for kind, values in (*waits.items(), ("ML", ml_waits)):
            want |= _histogram("creep_task_claim_to_start_seconds", {"task_type": kind}, values)
        assert pick(samples, "creep_task_claim_to_start_seconds") == _approx(want)
        want = {}
        for (kind, status), values in runs.items():
            want |= _histogram("creep_task_run_seconds",
                               {"task_type": kind, "status": status}, values)
        assert set(runs) == {("MA", "SUCCESS"), ("MA", "FAILED"), ("MB", "QUEUED"),
                             ("MB", "SUCCESS")}
        assert pick(samples, "creep_task_run_seconds") == _approx(want)
        assert pick(samples, "creep_queue_depth") == {
            ("creep_queue_depth", lbl(status="QUEUED", priority_band="0")): 1.0,
            ("creep_queue_depth", lbl(status="RUNNING", priority_band="5")): 1.0,
        }
        assert pick(samples, "creep_leases") == {("creep_leases", lbl(status="ACTIVE")): 1.0}
        assert pick(samples, "creep_assets") == {
            ("creep_assets", lbl(status="IN_USE")): 1.0,
            ("creep_assets", lbl(status="NEW")): 1.0,
        }
        assert pick(samples, "creep_ledger") == {
            ("creep_ledger_amount", lbl(entry_type="COST", currency="USD")): 1.25,
            ("creep_ledger_amount", lbl(entry_type="REVENUE", currency="USD")):
                float(Decimal("10.30")),
            ("creep_ledger_entries", lbl(entry_type="COST", currency="USD")): 1.0,
            ("creep_ledger_entries", lbl(entry_type="REVENUE", currency="USD")): 2.0,
        }
        # Per process: node b answered its own requests only.
    assert ("creep_http_request_duration_seconds_count",
            lbl(method="POST", route="/v1/workers/claim", status="200")) in second
    assert left  # still QUEUED: the band-0 queue depth above


def test_metrics_cache_keeps_scrapes_off_the_database(tmp_path: Path) -> None:
    server = start_server(f"sqlite:///{tmp_path}/cache.db", tmp_path / "s.log",
                          CREEP_METRICS_CACHE_SECONDS="300")
    try:
        _, key = server.tenant()
        created = ("creep_tasks_created_total", lbl(task_type="CACHED"))
        with server.client(key) as c:
            _submit(c, "CACHED")
            assert scrape(server)[created] == 1.0
            _submit(c, "CACHED")
            assert scrape(server)[created] == 1.0  # the cached numbers, for 300 s
    finally:
        stop_server(server)


def test_metrics_can_require_an_admin_key(tmp_path: Path) -> None:
    """With CREEP_METRICS_REQUIRE_KEY, /metrics (every tenant's numbers, ledger sums
    included) answers an admin key only, a read-only one too; health probes stay open."""
    server = start_server(f"sqlite:///{tmp_path}/locked.db", tmp_path / "s.log",
                          CREEP_METRICS_REQUIRE_KEY="true")
    try:
        _, tenant_key = server.tenant()
        auditor = server.key(None, read_only=True)["key"]
        with server.client() as c:
            r = c.get("/metrics")
            assert r.status_code == 401 and r.json()["type"].endswith("unauthorized")
            assert c.get("/health/live").status_code == 200
            r = c.get("/metrics", headers={"Authorization": f"Bearer {tenant_key}"})
            assert r.status_code == 403 and r.json()["type"].endswith("admin-only")
            r = c.get("/metrics", headers={"Authorization": f"Bearer {auditor}"})
            assert r.status_code == 200 and "creep_queue_depth" in r.text
    finally:
        stop_server(server)


def test_sqlite_fold_reads_outside_the_write_lock_and_a_loser_recomputes(tmp_path: Path) -> None:
    """SQLite folds read in a snapshot outside the writer lock; a folder whose cursor moved
    meanwhile (another API process folded first) computes again instead of counting twice."""
    import threading

    from creep import Creep
    from creep.engine.metrics_fold import TASK_EVENTS, fold_task_events, task_event_deltas

    app = Creep(f"sqlite:///{tmp_path}/fold.db")
    app.submit(task_type="RACE")
    store: Any = app.store
    seen: list[str | None] = []

    def step(cursor: str | None) -> tuple[str | None, Any]:
        seen.append(cursor)
        events = store.task_events_after(cursor, limit=1000)
        if len(seen) == 1:  # another process folds the same events before this one writes
            other = threading.Thread(target=fold_task_events, args=(store,))
            other.start()
            other.join()
        if not events:
            return cursor, {}
        return events[-1].cursor, task_event_deltas(store, events)

    assert store.metric_fold(TASK_EVENTS, step)
    assert len(seen) == 2 and seen[0] is None and seen[1] is not None
    values = {(n, labels): v for n, labels, v in store.metric_values()}
    assert values[("creep_tasks_created_total", '{"task_type":"RACE"}')] == 1.0
    app.close()


@pytest.fixture(params=["sqlite", "postgres"])
def fresh_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh database of its own (SQLite file or PostgreSQL schema)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/fresh.db"
        return
    require_postgres()
    url, drop = _pg_schema()
    try:
        yield url
    finally:
        drop()


def _task_types(samples: Samples) -> set[str]:
    return {v for (name, labels) in samples for k, v in labels
            if k == "task_type" and name.startswith("creep_task")}


def test_task_type_labels_are_capped_with_an_other_series(
    fresh_url: str, tmp_path: Path,
) -> None:
    """Task types are the tenants' own strings: past CREEP_METRICS_MAX_TASK_TYPES distinct
    ones, a new type is counted under task_type="_other" (a type already shown keeps its
    own series), so /metrics stays bounded however many types tenants invent. Label values
    with quotes, backslashes and newlines come back intact."""
    odd = 'q"uo\\te\nnl'
    server = start_server(fresh_url, tmp_path / "s.log", CREEP_METRICS_CACHE_SECONDS="0",
                          CREEP_MAINTENANCE_INTERVAL_SECONDS="0",
                          CREEP_METRICS_MAX_TASK_TYPES="3")
    try:
        _, key = server.tenant()
        with server.client(key) as c:
            for task_type in (odd, "T2", "T3", "T4", "T5"):
                _submit(c, task_type)
            first = _wait_for_count(
                server, ("creep_tasks_created_total", lbl(task_type="_other")), 2.0)
            assert pick(first, "creep_tasks_created") == {
                ("creep_tasks_created_total", lbl(task_type=odd)): 1.0,
                ("creep_tasks_created_total", lbl(task_type="T2")): 1.0,
                ("creep_tasks_created_total", lbl(task_type="T3")): 1.0,
                ("creep_tasks_created_total", lbl(task_type="_other")): 2.0,
            }
            # Thousands more types: still three of their own and _other.
            for i in range(40):
                _submit(c, f"X{i}")
            _submit(c, "T2")
            item = _claim(c, "T5")
            assert c.post(f"/v1/tasks/{item['task']['task_id']}/complete",
                          json={"claim_token": item["claim_token"]}).status_code == 200
        finished = ("creep_tasks_finished_total", lbl(task_type="_other", status="SUCCESS"))
        second = _wait_for_count(server, finished, 1.0)
        assert _task_types(second) == {odd, "T2", "T3", "_other"}
        assert second[("creep_tasks_created_total", lbl(task_type="_other"))] == 42.0
        assert second[("creep_tasks_created_total", lbl(task_type="T2"))] == 2.0
        assert second[("creep_task_run_seconds_count",
                       lbl(task_type="_other", status="SUCCESS"))] == 1.0
        assert second[("creep_task_claim_to_start_seconds_count", lbl(task_type="_other"))] == 1.0
    finally:
        stop_server(server)
