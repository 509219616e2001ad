"""/metrics and task retention (an in-process app on an injected clock, both backends): the
task counters keep what retention deleted, even when no scrape folded it first."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from creep import Creep, FrozenClock, TaskContext
from tests.api.inprocess import ADMIN, TestClient, acme_api
from tests.conftest import wait_until


@pytest.fixture
def api(app: Creep, db_url: str, clock: FrozenClock) -> Iterator[TestClient]:
    with acme_api(app, db_url, clock, metrics_cache_seconds=0) as client:
        yield client


def _scrape(api: TestClient) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    r = api.get("/metrics")
    assert r.status_code == 200, r.text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(r.text) for s in family.samples}


def test_tasks_retention_deleted_before_a_scrape_stay_counted(
    app: Creep, api: TestClient, clock: FrozenClock
) -> None:
    """The task counters are folded from task events at scrape time. Retention deleted
    finished tasks with their events while no scrape had folded them (Prometheus down, or a
    short retention period): they were never counted, though the README promises the numbers
    survive the purge of old tasks."""
    created = ("creep_tasks_created_total", (("task_type", "GONE"),))
    finished = ("creep_tasks_finished_total", (("status", "SUCCESS"), ("task_type", "GONE")))
    assert created not in _scrape(api)  # scraped once: the rollup is in use

    @app.handler("GONE")
    def gone(ctx: TaskContext) -> Any:
        return {"ok": True}

    ids = set()
    for _ in range(2):
        r = api.post("/v1/tasks", headers=ADMIN, json={"task_type": "GONE", "tenant_id": "acme"})
        assert r.status_code == 201, r.text
        ids.add(r.json()["task_id"])
    app.run_worker(burst=True, install_signals=False)
    # The fold reads the all-tasks stream, which on PostgreSQL shows events only once every
    # transaction older than them in the cluster has ended (another session's, e.g. a test
    # run beside this one). Retention deletes tasks days after they finished, long past
    # that; here "days" are a frozen clock's, so wait for the stream to show these events.
    assert wait_until(lambda: sum(e.task_id in ids for e in app.events_after(limit=10_000))
                      == 8, 30)

    sch = app.scheduler(holder_id="R")
    sch.run_once()  # installs the built-in schedules
    clock.advance(days=31)
    sch.run_once()  # creep.retention.tasks deletes both (30 days)
    assert api.get("/v1/tasks", headers=ADMIN, params={"tenant_id": "acme"}).json()[
        "items"] == []

    samples = _scrape(api)
    assert samples.get(created) == 2.0
    assert samples.get(finished) == 2.0
    assert samples.get(("creep_task_run_seconds_count",
                        (("status", "SUCCESS"), ("task_type", "GONE")))) == 2.0
