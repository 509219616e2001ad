"""Three `creep scheduler` processes on one PostgreSQL database, the leader SIGKILLed midway:
a 1-second interval schedule fires each slot exactly once, and no slot waits longer than the
lock TTL (plus the tick a survivor needs to notice). CREEP_TEST_SCHEDULER_SECONDS sets the
duration (default 30)."""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

from creep import Creep
from creep.domain.execution import ExecutionState, TriggerType
from creep.engine.scheduler import SCHEDULER_LOCK
from tests.conftest import child_pythonpath

ROOT = Path(__file__).resolve().parents[2]
DURATION = float(os.environ.get("CREEP_TEST_SCHEDULER_SECONDS", "30"))
TTL = 3.0
TICK = 0.2


def _scheduler(db_url: str, name: str, out: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "CREEP_DATABASE_URL": db_url, "PYTHONPATH": child_pythonpath()}
    with open(out, "ab") as fh:
        return subprocess.Popen(
            [sys.executable, "-m", "creep.cli", "scheduler", "--tick", str(TICK),
             "--lock-ttl", str(TTL), "--holder-id", name, "--log-level", "INFO"],
            env=env, cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT,
        )


def test_three_schedulers_one_killed_each_slot_once(pg_schema_url: str, tmp_path: Path) -> None:
    app = Creep(pg_schema_url)
    app.store.migrate()
    sched = app.create_schedule(name="heartbeat", type="PING", interval=1, max_concurrent=10_000)
    procs = {
        name: _scheduler(pg_schema_url, name, tmp_path / f"{name}.log")
        for name in ("s1", "s2", "s3")
    }
    killed = None
    try:
        start = time.monotonic()
        while time.monotonic() - start < DURATION:
            time.sleep(0.25)
            if killed is None and time.monotonic() - start > DURATION / 2:
                lock = app.schedules.lock_get(SCHEDULER_LOCK)
                assert lock is not None and lock["holder_id"] in procs
                killed = lock["holder_id"]
                procs[killed].send_signal(signal.SIGKILL)
        for name, proc in procs.items():
            if name != killed:
                proc.send_signal(signal.SIGTERM)
        for name, proc in procs.items():
            code = proc.wait(timeout=30)
            assert code == (-signal.SIGKILL if name == killed else 0), (
                name, (tmp_path / f"{name}.log").read_text()[-3000:])
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
    runs = [
        e for e in app.list_executions(schedule=sched.uid, limit=100_000)
        if e.trigger_type is TriggerType.SCHEDULED
    ]
    runs.sort(key=lambda e: e.scheduled_at)
    slots = [e.scheduled_at for e in runs]
    # Exactly once: every slot from the first to the last, none twice, none missing.
    assert len(slots) == len(set(slots))
    assert slots == [slots[0] + timedelta(seconds=k) for k in range(len(slots))]
    assert len(slots) >= DURATION * 0.6
    assert all(e.state is ExecutionState.PENDING and e.task_id for e in runs)
    assert len(app.list_tasks(task_type="PING", limit=100_000)) == len(slots)
    holders = {e.run_by for e in runs}
    assert killed in holders and len(holders) >= 2  # the takeover happened
    # No slot waited longer than the TTL plus the tick a survivor needs to notice: lateness
    # is firing time minus slot time (2 s margin for a loaded CI machine; figures in the report).
    # Slots that came due before the first process was up (interpreter start-up on a loaded
    # machine) measure start-up, not takeover, so lateness counts from the first firing on.
    fired = sorted(e.created_at for e in runs)
    late = max(
        (e.created_at - e.scheduled_at).total_seconds() for e in runs if e.scheduled_at >= fired[0]
    )
    gap = max((b - a).total_seconds() for a, b in itertools.pairwise(fired))
    print(f"{len(slots)} slots, holders {sorted(holders)}, killed {killed}, "
          f"max lateness {late:.2f}s, max firing gap {gap:.2f}s")
    assert late <= TTL + TICK + 2.0, late
    # After SIGTERM the lock is released, not left to expire.
    lock = app.schedules.lock_get(SCHEDULER_LOCK)
    assert lock is not None and lock["state"] == "released"
    app.close()
