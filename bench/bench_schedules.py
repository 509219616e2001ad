"""Execution-history benchmark (seed 003's targets) over a large history table:

- bulk insert of 1,000 executions                         (target < 2 s)
- a 90-day query returning 10,000 rows of one schedule    (target < 2 s)
- a multi-filter history query (tenant, name, state, window; one page of 100)
                                                          (target < 500 ms)

    python bench/bench_schedules.py -n 1000000                      # SQLite
    python bench/bench_schedules.py -n 1000000 --database-url postgresql://127.0.0.1:5432/test

The history is generated inside the database (one INSERT ... SELECT) so preloading a million
rows takes seconds, not the benchmark's subject. CI runs it only with a small -n, if at all.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))

from bench_queue import fresh_url  # noqa: E402
from creep import Creep  # noqa: E402
from creep.domain.execution import ExecutionState, TaskExecution, TriggerType  # noqa: E402

TARGET_ROWS = 10_000  # rows of the "target" schedule inside the last 90 days


def preload(app: Creep, n: int, now: datetime) -> None:
    """n history rows: 1,000 schedules over 365 days, 4 tenants, mixed end states. The first
    TARGET_ROWS rows belong to schedule `target` and fall inside the last 90 days."""
    now_us = int(now.timestamp() * 1_000_000)
    if app.store.dialect == "sqlite":
        sql = f"""
        WITH RECURSIVE g(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM g WHERE i + 1 < {n})
        INSERT INTO task_executions (tenant_id, task_uid, task_name, task_type, execution_uid,
            task_id, run_by, scheduled_at, started_at, finished_at, state, result,
            result_truncated, error_message, error_stack, error_stack_truncated, duration_ms,
            progress, retry_count, trigger_type, trigger_by, created_at, updated_at)
        SELECT 't' || (i % 4),
            CASE WHEN i < {TARGET_ROWS} THEN 'target' ELSE 'sched-' || (i % 1000) END,
            CASE WHEN i < {TARGET_ROWS} THEN 'target' ELSE 'sched-' || (i % 1000) END,
            'T', 'h-' || i, NULL, 'bench', ts - i, ts, ts + 1000000,
            CASE i % 5 WHEN 0 THEN 'success' WHEN 1 THEN 'failure' WHEN 2 THEN 'timeout'
                WHEN 3 THEN 'cancelled' ELSE 'interrupted' END,
            '{{"ok":true}}', 0, NULL, NULL, 0, 1000, 100, 0, 'scheduled', NULL, ts, ts
        FROM (SELECT i, CASE WHEN i < {TARGET_ROWS}
                 THEN {now_us} - (i * 777000000) % (89 * 86400000000)
                 ELSE {now_us} - (i * 31536000) % (365 * 86400000000) END AS ts FROM g)
        """
        conn = app.store._conn()  # type: ignore[attr-defined]
        conn.execute("BEGIN IMMEDIATE")
        conn.execute(sql)
        conn.execute("COMMIT")
        conn.execute("ANALYZE")
        return
    sql = f"""
    INSERT INTO task_executions (tenant_id, task_uid, task_name, task_type, execution_uid,
        task_id, run_by, scheduled_at, started_at, finished_at, state, result, result_truncated,
        error_message, error_stack, error_stack_truncated, duration_ms, progress, retry_count,
        trigger_type, trigger_by, created_at, updated_at)
    SELECT 't' || (i %% 4), nm, nm, 'T', 'h-' || i, NULL, 'bench',
        ts - make_interval(secs => i), ts, ts + interval '1 second',
        (ARRAY['success','failure','timeout','cancelled','interrupted'])[i %% 5 + 1],
        '{{"ok":true}}', false, NULL, NULL, false, 1000, 100, 0, 'scheduled', NULL, ts, ts
    FROM (SELECT i,
            CASE WHEN i < {TARGET_ROWS} THEN 'target' ELSE 'sched-' || (i %% 1000) END AS nm,
            CASE WHEN i < {TARGET_ROWS}
                THEN %(now)s - make_interval(secs => (i * 777) %% (89 * 86400))
                ELSE %(now)s - make_interval(secs => (i * 31.536) %% (365 * 86400)) END AS ts
          FROM generate_series(0, {n - 1}) AS i) g
    """
    with app.store.pool.connection() as conn:  # type: ignore[attr-defined]
        conn.execute(sql.encode(), {"now": now})
        conn.commit()
        conn.autocommit = True
        conn.execute("VACUUM ANALYZE task_executions")


def rows(k: int, now: datetime) -> list[TaskExecution]:
    return [
        TaskExecution(
            id=0, tenant_id="t0", task_uid="bulk", task_name="bulk", task_type="T",
            execution_uid=str(uuid.uuid4()), task_id=None, run_by="bench",
            scheduled_at=now - timedelta(seconds=i), started_at=now, finished_at=now,
            state=ExecutionState.SUCCESS, result='{"ok":true}', result_truncated=False,
            error_message=None, error_stack=None, error_stack_truncated=False, duration_ms=5,
            progress=100, retry_count=0, trigger_type=TriggerType.SCHEDULED, trigger_by=None,
            created_at=now, updated_at=now,
        )
        for i in range(k)
    ]


def timed(fn: Any, repeat: int) -> tuple[float, Any]:
    times, out = [], None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--database-url", default=None)
    ap.add_argument("-n", type=int, default=1_000_000, help="history rows to preload")
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    now = datetime.now(UTC).replace(microsecond=0)
    with tempfile.TemporaryDirectory() as tmp:
        url, drop = fresh_url(args.database_url, Path(tmp))
        app = Creep(url)
        try:
            app.store.migrate()
            t = time.perf_counter()
            preload(app, max(args.n, TARGET_ROWS), now)
            preload_s = time.perf_counter() - t
            store = app.schedules
            batches = iter([rows(1000, now - timedelta(days=d)) for d in range(args.repeat)])
            insert_s, _ = timed(lambda: store.execution_insert_many(next(batches)), args.repeat)
            window, got = timed(
                lambda: app.list_executions(
                    name="target", started_from=now - timedelta(days=90), limit=TARGET_ROWS),
                args.repeat,
            )
            assert len(got) == TARGET_ROWS, len(got)
            multi, page = timed(
                lambda: app.list_executions(
                    tenant_id="t1", name="sched-101", state="failure",
                    started_from=now - timedelta(days=180), started_to=now, limit=100),
                args.repeat,
            )
            sch = app.scheduler(holder_id="bench", retention_jobs=[])
            app.create_schedule(name="bench-tick", type="T", interval=1, max_concurrent=10_000)
            tick, _ = timed(sch.run_once, args.repeat)
            report = {
                "backend": app.store.dialect, "history_rows": max(args.n, TARGET_ROWS),
                "preload_s": round(preload_s, 1),
                "bulk_insert_1000_s": round(insert_s, 4),
                "query_90_days_10000_rows_s": round(window, 4),
                "multi_filter_query_ms": round(multi * 1000, 2),
                "multi_filter_rows": len(page),
                "scheduler_tick_ms": round(tick * 1000, 2),
            }
            print(json.dumps(report))
        finally:
            app.close()
            if drop:
                drop()


if __name__ == "__main__":
    main()
