"""What a schedule firing costs: one transaction (execution + TaskOrder + events + next_run)
against the former two steps (execution committed, then the TaskOrder in a second
transaction), one slot per call as the scheduler fires them.

    python bench/bench_schedule_firing.py -n 500                        # SQLite
    python bench/bench_schedule_firing.py -n 500 --database-url postgresql://127.0.0.1:5432/test
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))

from bench_queue import fresh_url  # noqa: E402
from creep import Creep  # noqa: E402
from creep.domain.schedule import Firing, attach_task_specs, task_fields  # noqa: E402
from creep.domain.task_spec import validate_task_spec  # noqa: E402

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def per_call_ms(fn: Callable[[int], None], n: int) -> tuple[float, float]:
    """(median, p95) milliseconds of fn(k) for k in range(n)."""
    times = []
    for k in range(n):
        t = time.perf_counter()
        fn(k)
        times.append((time.perf_counter() - t) * 1000)
    times.sort()
    return statistics.median(times), times[int(len(times) * 0.95) - 1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--database-url", default=None)
    ap.add_argument("-n", type=int, default=500, help="firings per variant")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        url, drop = fresh_url(args.database_url, Path(tmp))
        app = Creep(url)
        try:
            app.store.migrate()
            store = app.schedules
            one = app.create_schedule(name="one-tx", type="T", interval=1, max_concurrent=10**4)
            two = app.create_schedule(name="two-tx", type="T", interval=1, max_concurrent=10**4)

            def one_tx(k: int) -> None:
                f = attach_task_specs(one, [Firing(T0 + timedelta(seconds=k))], now=T0,
                                      limits=app.limits)
                store.schedule_fire(one.uid, f, run_by="bench", now=T0)

            def two_tx(k: int) -> None:
                f = Firing(T0 + timedelta(seconds=k))
                store.schedule_fire(two.uid, [f], run_by="bench", now=T0)
                spec = validate_task_spec(task_fields(two, f), now=T0, limits=app.limits)
                store.task_create_many([spec], T0)

            two_tx(10**6)  # warm up connections and statement caches
            one_tx(10**6)
            m1, p1 = per_call_ms(one_tx, args.n)
            m2, p2 = per_call_ms(two_tx, args.n)
            print(json.dumps({
                "backend": app.store.dialect, "firings": args.n,
                "one_transaction_ms": {"median": round(m1, 2), "p95": round(p1, 2)},
                "two_transactions_ms": {"median": round(m2, 2), "p95": round(p2, 2)},
            }))
        finally:
            app.close()
            if drop:
                drop()


if __name__ == "__main__":
    main()
