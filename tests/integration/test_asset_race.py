"""Several worker processes compete for a small asset pool: no asset is ever over-allocated."""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from creep import AssetStatus, Creep, LeaseStatus, TaskStatus
from tests.conftest import child_pythonpath

ROOT = Path(__file__).resolve().parents[2]
RACE_TASKS = int(os.environ.get("CREEP_TEST_RACE_TASKS", "1000"))
WORKERS = 3


def _worker(db_url: str, out: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "CREEP_DATABASE_URL": db_url, "PYTHONPATH": child_pythonpath(),
           "CREEP_TEST_HOLD_SECONDS": "0.02"}
    with open(out, "ab") as sink:
        return subprocess.Popen(
            [sys.executable, "-m", "tests.apps.asset_app", "4"], env=env, cwd=ROOT,
            stdout=sink, stderr=subprocess.STDOUT,
        )


@pytest.mark.slow
def test_no_over_allocation_with_several_worker_processes(db_url: str, tmp_path: Path) -> None:
    app = Creep(db_url)
    pool = app.import_assets([
        {"sku_category": "RAW_NET", "sku_code": f"ip.dc.{i}", "max_concurrency": 2}
        for i in range(5)
    ])
    app.submit_many([
        {"task_type": "LEASED", "priority": i % 100,
         "resource_hints": [{"sku_category": "RAW_NET", "sku_code": "ip.dc.*"}]}
        for i in range(RACE_TASKS)
    ])
    out = tmp_path / "workers.out"
    workers = [_worker(db_url, out) for _ in range(WORKERS)]
    peak: collections.Counter[str] = collections.Counter()
    samples = 0
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            active = collections.Counter(
                lease.asset_id for lease in app.list_leases(status="ACTIVE", limit=10_000)
            )
            for asset_id, n in active.items():
                peak[asset_id] = max(peak[asset_id], n)
            for asset in app.list_assets():
                assert asset.current_concurrency <= asset.max_concurrency
            samples += 1
            if not app.list_tasks(status="QUEUED", limit=1) and not app.list_tasks(
                    status="RUNNING", limit=1):
                break
            time.sleep(0.005)
        else:
            raise AssertionError("the pool was not drained in time: " + out.read_text()[-2000:])
    finally:
        for w in workers:
            w.send_signal(signal.SIGTERM)
        for w in workers:
            assert w.wait(timeout=60) == 0, out.read_text()[-2000:]
    assert samples > 5 and peak, "the sampler should have seen leases in use"
    # Every asset was filled to its limit at some sampled moment, and never beyond it.
    assert max(peak.values()) == 2 and set(peak.values()) <= {1, 2}, peak
    statuses = collections.Counter(t.status for t in app.list_tasks(limit=RACE_TASKS + 10))
    assert statuses == {TaskStatus.SUCCESS: RACE_TASKS}
    leases = app.list_leases(limit=RACE_TASKS * 2)
    assert len(leases) == RACE_TASKS
    assert {x.status for x in leases} == {LeaseStatus.RELEASED}
    for asset in app.list_assets():
        assert asset.current_concurrency == 0 and asset.status is AssetStatus.READY
    allocated = sum(len(app.asset_events(asset_id=a.asset_id, event_type="ALLOCATED",
                                         limit=RACE_TASKS)) for a in pool)
    assert allocated == RACE_TASKS
    app.close()
