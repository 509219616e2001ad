"""Chaos drain: "never loses work, never runs a task twice while its claim is live".

Tasks of several kinds (plain, leased from a small pool of max_concurrency 2, retried by
their handler, failing, timing out) are submitted in waves to `creep worker` processes with
2-second claims, while a chaos thread terminates random PostgreSQL backends of the workers
(pg_terminate_backend, one at a time) and kill -9's a worker twice, starting a replacement
each time. The handlers (tests/apps/chaos_app.py) log every run to files of their own; at the
end the runs are held against what creep recorded: statuses, task events, leases, ledger.

CREEP_CHAOS_TASKS (default 400) and CREEP_CHAOS_SECONDS (default 8) make bigger runs.
"""

from __future__ import annotations

import collections
import math
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest

from creep import Creep, LeaseStatus, TaskStatus
from creep.domain.task import TASK_TRANSITIONS
from tests.conftest import PG_URL

ROOT = Path(__file__).resolve().parents[2]
TASKS = int(os.environ.get("CREEP_CHAOS_TASKS", "400"))
SECONDS = float(os.environ.get("CREEP_CHAOS_SECONDS", "8"))
CLAIM_TTL = 2
WORKERS = 3
POOL = 3  # assets of max_concurrency 2
_EXPIRED = re.compile(r"claim expired at (\S+) \(worker lost\)")
EXPECTED = {"PLAIN": TaskStatus.SUCCESS, "LEASED": TaskStatus.SUCCESS,
            "FLAKY": TaskStatus.SUCCESS, "FAIL": TaskStatus.FAILED, "SLOW": TaskStatus.TIMEOUT}


def _kind(i: int) -> str:
    return {0: "FAIL", 1: "SLOW", 2: "FLAKY", 3: "FLAKY"}.get(i % 50, "LEASED" if i % 4 == 0
                                                             else "PLAIN")


def _order(i: int) -> dict[str, Any]:
    kind = _kind(i)
    order: dict[str, Any] = {"task_type": kind, "priority": i % 101, "currency": "USD"}
    if kind == "LEASED":
        order["resource_hints"] = [{"sku_category": "RAW_NET", "sku_code": "chaos.ip.*"}]
        order["timeout_ms"] = 600_000  # never NO_RESOURCE within the test
    elif kind == "FLAKY":
        order["constraints"] = {"max_retries": 8}  # two retries of its own, and the chaos
    elif kind == "SLOW":
        order["timeout_ms"] = 500
    return order


@dataclass
class Worker:
    proc: subprocess.Popen[bytes]
    name: str  # the application_name of its PostgreSQL connections


@dataclass
class Chaos:
    db_url: str
    log_dir: Path
    postgres: bool
    workers: list[Worker] = field(default_factory=list)
    killed: dict[int, float] = field(default_factory=dict)  # pid -> wall time of kill -9
    terminated: int = 0
    problems: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def start_worker(self) -> Worker:
        name = f"chaos_{uuid.uuid4().hex[:10]}"
        url = f"{self.db_url}&application_name={name}" if self.postgres else self.db_url
        # This checkout's creep, whichever one the interpreter has installed.
        path = os.pathsep.join([str(ROOT / "src"), str(ROOT)])
        env = {**os.environ, "CREEP_DATABASE_URL": url, "PYTHONPATH": path,
               "CREEP_CHAOS_LOG_DIR": str(self.log_dir)}
        with open(self.log_dir / "workers.out", "ab") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "creep.cli", "worker", "--app",
                 "tests.apps.chaos_app:app", "--log-level", "WARNING", "--concurrency", "6",
                 "--claim-ttl", str(CLAIM_TTL), "--shutdown-grace", "5"],
                env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
            )
        worker = Worker(proc, name)
        with self.lock:
            self.workers.append(worker)
        return worker

    def _open_runs(self, pid: int) -> int:
        """Runs the process started and has not ended (from its run log)."""
        path = self.log_dir / f"runs.{pid}.log"
        if not path.exists():
            return 0
        phases = collections.Counter(line.split()[0] for line in path.read_text().splitlines())
        return phases["start"] - phases["end"]

    def _kill_one(self) -> None:
        """kill -9 a worker that is running some handler, and start a replacement."""
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not self.stop.is_set():
            with self.lock:
                busy = [w for w in self.workers if w.proc.poll() is None
                        and self._open_runs(w.proc.pid) > 0]
                if busy:
                    victim = random.choice(busy)
                    victim.proc.send_signal(signal.SIGKILL)
                    self.killed[victim.proc.pid] = time.time()
                    victim.proc.wait(10)
                    self.workers.remove(victim)
                    break
            time.sleep(0.01)
        else:
            self.problems.append("no busy worker to kill -9")
        self.start_worker()

    def _terminate_a_backend(self) -> None:
        with self.lock:
            names = [w.name for w in self.workers if w.proc.poll() is None]
        if not names:
            return
        with psycopg.connect(PG_URL, autocommit=True) as admin:
            pids = [r[0] for r in admin.execute(
                "SELECT pid FROM pg_stat_activity WHERE application_name = %s",
                (random.choice(names),))]
            if pids:
                row = admin.execute("SELECT pg_terminate_backend(%s)",
                                    (random.choice(pids),)).fetchone()
                self.terminated += bool(row and row[0])

    def run(self) -> None:
        started = time.monotonic()
        kills = [SECONDS * 0.3, SECONDS * 0.65]
        try:
            while not self.stop.is_set() and time.monotonic() - started < SECONDS:
                if kills and time.monotonic() - started >= kills[0]:
                    kills.pop(0)
                    self._kill_one()
                elif self.postgres:
                    self._terminate_a_backend()
                self.stop.wait(random.uniform(0.1, 0.4))
        except Exception as exc:  # reported by the test, not lost in a thread
            self.problems.append(f"chaos thread: {exc!r}")


@dataclass
class Run:
    task_id: str
    attempt: int
    pid: int
    start: float
    end: float | None = None


def _runs(log_dir: Path) -> list[Run]:
    runs: dict[tuple[str, int, int], Run] = {}
    duplicates: list[str] = []
    for path in log_dir.glob("runs.*.log"):
        for line in path.read_text().splitlines():
            phase, task_id, attempt, pid, wall = line.split()
            key = (task_id, int(attempt), int(pid))
            if phase == "start":
                if key in runs:
                    duplicates.append(line)
                runs[key] = Run(task_id, int(attempt), int(pid), float(wall))
            else:
                runs[key].end = float(wall)
    assert not duplicates, f"one process ran one attempt of a task twice: {duplicates[:5]}"
    return list(runs.values())


def _all_tasks(app: Creep) -> list[Any]:
    return app.list_tasks(limit=TASKS + 10)


def _drained(app: Creep) -> bool:
    return not any(app.list_tasks(status=s, limit=1) for s in ("PENDING", "QUEUED", "RUNNING"))


@pytest.mark.slow
def test_chaos_drain_loses_nothing_and_never_runs_a_live_claim_twice(
    db_url: str, tmp_path: Path
) -> None:
    postgres = db_url.startswith("postgresql")
    app = Creep(db_url)
    assets = app.import_assets([
        {"sku_category": "RAW_NET", "sku_code": f"chaos.ip.{i}", "max_concurrency": 2,
         "cost_per_lease": "0.01", "currency": "USD"} for i in range(POOL)])
    chaos = Chaos(db_url, tmp_path, postgres)
    for _ in range(WORKERS):
        chaos.start_worker()
    thread = threading.Thread(target=chaos.run, daemon=True)
    peak: collections.Counter[str] = collections.Counter()
    over: list[str] = []
    submitted: list[Any] = []
    kinds: dict[str, str] = {}
    try:
        t0 = time.monotonic()
        thread.start()
        # Waves of tasks over the first three quarters of the chaos, the state sampled between.
        deadline = t0 + SECONDS + 30
        while time.monotonic() < deadline:
            due = min(TASKS, int(TASKS * (time.monotonic() - t0) / (SECONDS * 0.75)) + 1)
            if len(submitted) < due:
                orders = [_order(i) for i in range(len(submitted), due)]
                for order, task in zip(orders, app.submit_many(orders), strict=True):
                    kinds[task.task_id] = order["task_type"]
                    submitted.append(task)
            active = collections.Counter(
                x.asset_id for x in app.list_leases(status="ACTIVE", limit=1000))
            for asset_id, n in active.items():
                peak[asset_id] = max(peak[asset_id], n)
                if n > 2:
                    over.append(f"{n} ACTIVE leases on {asset_id}")
            for asset in app.list_assets():
                if asset.current_concurrency > asset.max_concurrency:
                    over.append(f"{asset.asset_id}: current_concurrency "
                                f"{asset.current_concurrency}")
            if len(submitted) == TASKS and not thread.is_alive() and _drained(app):
                break
            time.sleep(0.02)
        else:
            left = collections.Counter(t.status.value for t in _all_tasks(app))
            raise AssertionError(f"not drained in time: {left}; workers: "
                                 + (tmp_path / "workers.out").read_text()[-3000:])
    finally:
        chaos.stop.set()
        thread.join(15)
        for w in chaos.workers:
            if w.proc.poll() is None:
                w.proc.send_signal(signal.SIGTERM)
        codes = [w.proc.wait(30) for w in chaos.workers]
    out = (tmp_path / "workers.out").read_text()
    assert codes == [0] * len(codes), out[-3000:]
    assert not chaos.problems, chaos.problems
    assert not over, over[:5]
    assert len(chaos.killed) == 2
    if postgres:
        assert chaos.terminated > 0

    tasks = {t.task_id: t for t in _all_tasks(app)}
    assert len(tasks) == TASKS
    runs = _runs(tmp_path)
    by_task: dict[str, list[Run]] = collections.defaultdict(list)
    for run in runs:
        by_task[run.task_id].append(run)
    problems: list[str] = []
    lost = leased_claims = 0
    for task_id, task in tasks.items():
        kind = kinds[task_id]
        events = app.task_events(task_id)
        where = f"{kind} {task_id} ({[e.event_type for e in events]})"
        if task.status is not EXPECTED[kind]:
            problems.append(f"{where}: {task.status.value} {task.result_code}")
        # The events form one legal chain of transitions, ending in the task's status.
        status: str | None = None
        for e in events:
            if e.to_status is None or e.from_status == e.to_status:
                continue  # progress, updated, cancel_requested: no transition
            if e.from_status != status or (
                    status is not None
                    and TaskStatus(e.to_status) not in TASK_TRANSITIONS[TaskStatus(status)]):
                problems.append(f"{where}: {e.event_type} {e.from_status}->{e.to_status} "
                                f"after {status}")
            status = e.to_status
        if status != task.status.value:
            problems.append(f"{where}: events end in {status}, the task is {task.status.value}")
        starts = [e for e in events if e.event_type == "started"]
        given_back = sum(e.event_type == "requeued" for e in events)
        if task.attempt != len(starts) - given_back:
            problems.append(f"{where}: attempt {task.attempt}, {len(starts)} started events")
        # Every run of a handler is one claim: a started event of its attempt, by its process.
        claims = collections.Counter(
            (e.attempt, int(str(e.payload["worker_id"]).split(":")[1])) for e in starts)
        seen = collections.Counter((r.attempt, r.pid) for r in by_task[task_id])
        for key, n in seen.items():
            if n > claims[key]:
                problems.append(f"{where}: attempt {key[0]} ran {n} times in pid {key[1]}, "
                                f"claimed {claims[key]} times")
        if not given_back and len({r.attempt for r in by_task[task_id]}) != len(by_task[task_id]):
            problems.append(f"{where}: two runs with one attempt number: {by_task[task_id]}")
        # Two runs overlap only when the earlier one's claim expired and was taken back before
        # the later one started (the rescue's retrying event, result_code WORKER_LOST, names
        # when the claim expired), and no claim is taken back before it expired.
        rescued: dict[int, float] = {}
        for e in events:
            if e.event_type == "retrying" and e.payload.get("result_code") == "WORKER_LOST":
                found = _EXPIRED.search(str(e.payload.get("message")))
                expired = datetime.fromisoformat(found[1]).timestamp() if found else math.inf
                if e.created_at.timestamp() < expired:
                    problems.append(f"{where}: attempt {e.attempt} taken back at "
                                    f"{e.created_at}, its claim expiring {e.payload}")
                rescued[e.attempt] = e.created_at.timestamp()
        lost += len(rescued)
        ordered = sorted(by_task[task_id], key=lambda r: r.start)
        for i, first in enumerate(ordered):
            end = first.end if first.end is not None else chaos.killed.get(first.pid)
            for later in ordered[i + 1:]:
                if end is None or later.start < end:
                    taken_back = rescued.get(first.attempt)
                    if taken_back is None or taken_back > later.start:
                        problems.append(f"{where}: attempt {later.attempt} (pid {later.pid}) "
                                        f"started while attempt {first.attempt} (pid "
                                        f"{first.pid}) ran with its claim live")
        if kind == "LEASED":
            leased_claims += len(starts)
            leases = app.list_leases(task_id=task_id)
            if len(leases) != len(starts):
                problems.append(f"{where}: {len(leases)} leases for {len(starts)} claims")
    assert not problems, f"{len(problems)} problems:\n" + "\n".join(problems[:20])
    print(f"chaos: {chaos.terminated} backends terminated, kill -9 of {sorted(chaos.killed)}, "
          f"{lost} claims rescued, {len(runs)} runs, peak {dict(peak)}")
    assert lost > 0, "kill -9 of a busy worker should have left claims to rescue"

    leases = app.list_leases(limit=TASKS * 4)
    assert not [x for x in leases if x.status is LeaseStatus.ACTIVE]
    assert len(leases) == leased_claims
    costs = collections.Counter(
        e.lease_id for e in app.ledger_entries(limit=TASKS * 4) if e.entry_type == "COST")
    assert costs == {x.lease_id: 1 for x in leases}
    assert max(peak.values()) == 2, peak
    for asset in app.list_assets():
        assert asset.current_concurrency == 0, asset
    assert {a.asset_id for a in assets} >= set(peak)
    app.close()

