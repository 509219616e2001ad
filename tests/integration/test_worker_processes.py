"""Worker processes against one database: draining, kill -9, graceful shutdown by signal."""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from creep import Creep, TaskStatus
from tests.conftest import child_pythonpath

ROOT = Path(__file__).resolve().parents[2]
DRAIN_TASKS = int(os.environ.get("CREEP_TEST_DRAIN_TASKS", "5000"))


def _worker(db_url: str, log: Path, *args: str) -> subprocess.Popen[bytes]:
    env = {
        **os.environ, "CREEP_DATABASE_URL": db_url, "CREEP_TEST_LOG": str(log),
        "PYTHONPATH": child_pythonpath(),
    }
    with open(log.with_suffix(".out"), "ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "creep.cli", "worker", "--app", "tests.apps.proc_app:app",
             "--log-level", "WARNING", *args],
            env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
        )


def _output(log: Path) -> str:
    return log.with_suffix(".out").read_text()


def _wait_for(predicate: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _log_lines(log: Path) -> list[list[str]]:
    return [line.split() for line in log.read_text().splitlines()] if log.exists() else []


@pytest.mark.slow
def test_two_workers_drain_without_running_a_task_twice(db_url: str, tmp_path: Path) -> None:
    app = Creep(db_url)
    tasks = app.submit_many([{"task_type": "NOOP", "priority": i % 101}
                             for i in range(DRAIN_TASKS)])
    log = tmp_path / "runs.log"
    workers = [_worker(db_url, log, "--burst", "--concurrency", "50") for _ in range(2)]
    for w in workers:
        assert w.wait(timeout=240) == 0, _output(log)
    runs = collections.Counter(line[0] for line in _log_lines(log))
    assert len(runs) == DRAIN_TASKS
    assert max(runs.values()) == 1, [t for t, n in runs.items() if n > 1][:5]
    pids = {line[2] for line in _log_lines(log)}
    assert len(pids) == 2, "both workers should have taken part"
    statuses = collections.Counter(
        t.status for t in app.list_tasks(limit=DRAIN_TASKS + 10)
    )
    assert statuses == {TaskStatus.SUCCESS: DRAIN_TASKS}
    assert {app.get_task(tasks[0].task_id).attempt} == {1}
    app.close()


@pytest.mark.slow
def test_kill_9_mid_task_is_requeued_and_finished_elsewhere(db_url: str, tmp_path: Path) -> None:
    app = Creep(db_url)
    t = app.submit(task_type="SLEEP", input_payload={"seconds": 0.5}, timeout_ms=60_000)
    log = tmp_path / "runs.log"
    victim = _worker(db_url, log, "--claim-ttl", "2")
    try:
        _wait_for(lambda: any(line[3] == "start" for line in _log_lines(log)), 30,
                  "the first worker to start the task")
        victim.send_signal(signal.SIGKILL)
        victim.wait(10)
    finally:
        if victim.poll() is None:
            victim.kill()
    assert app.get_task(t.task_id).status is TaskStatus.RUNNING
    rescuer = _worker(db_url, log, "--claim-ttl", "2")
    try:
        _wait_for(lambda: app.get_task(t.task_id).status is TaskStatus.SUCCESS, 60,
                  "the task to be rescued and finished")
    finally:
        rescuer.send_signal(signal.SIGTERM)
        rescuer.wait(30)
    done = app.get_task(t.task_id)
    assert done.attempt == 2
    starts = [line for line in _log_lines(log) if line[3] == "start"]
    assert [s[1] for s in starts] == ["1", "2"] and starts[0][2] != starts[1][2]
    kinds = [e.event_type for e in app.task_events(t.task_id)]
    assert kinds == ["created", "queued", "started", "retrying", "started", "succeeded"]
    app.close()


@pytest.mark.slow
def test_sigterm_drains_and_requeues_without_charging_an_attempt(
    db_url: str, tmp_path: Path
) -> None:
    app = Creep(db_url)
    short = app.submit(task_type="SLEEP", input_payload={"seconds": 0.3}, priority=90)
    long = app.submit(task_type="SLEEP", input_payload={"seconds": 60}, priority=10)
    log = tmp_path / "runs.log"
    worker = _worker(db_url, log, "--shutdown-grace", "1.5")
    _wait_for(lambda: len([x for x in _log_lines(log) if x[3] == "start"]) == 2, 30,
              "both tasks to start")
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=30) == 0, _output(log)
    assert app.get_task(short.task_id).status is TaskStatus.SUCCESS
    given_back = app.get_task(long.task_id)
    assert given_back.status is TaskStatus.QUEUED and given_back.attempt == 0
    assert [e.event_type for e in app.task_events(long.task_id)][-1] == "requeued"
    app.close()
