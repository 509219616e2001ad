"""What a /metrics scrape costs the database: folding new task events into the rollup and
reading the scrape-time gauges.

    python bench/bench_metrics.py                     # SQLite (a temp file), 20000 tasks
    python bench/bench_metrics.py --tasks 50000 --database-url postgresql://127.0.0.1:5432/test

Each task is submitted, claimed and completed (4 events: created, queued, started,
succeeded), then: the first scrape (folds everything), a scrape with nothing new,
and a scrape after 1000 more finished tasks.
"""

from __future__ import annotations

import argparse
import tempfile
import time
import uuid
from datetime import UTC, datetime

from creep.api.metrics import DatabaseMetrics
from creep.domain.outcomes import Backoff, Outcome, OutcomeKind, resolve
from creep.ports import Completion
from creep.storage import open_store


def _run(store: object, n: int, kind: str) -> None:
    from creep import Creep

    app = Creep(store=store)  # type: ignore[arg-type]
    for start in range(0, n, 1000):
        app.submit_many([{"task_type": kind} for _ in range(min(1000, n - start))])
        claimed = app.store.task_claim("bench", [kind], 1000, datetime.now(UTC), 60.0)
        now = datetime.now(UTC)
        app.store.task_complete_many([
            Completion(o, resolve(o, attempt=c.task.attempt, max_attempts=c.task.max_attempts,
                                  now=now, backoff=Backoff()))
            for c in claimed
            for o in [Outcome(c.task.task_id, c.claim_token, OutcomeKind.SUCCEEDED)]
        ], now)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tasks", type=int, default=20000)
    parser.add_argument("--database-url")
    args = parser.parse_args()
    url = args.database_url or f"sqlite:///{tempfile.mkdtemp()}/bench.db"
    store = open_store(url)
    store.migrate()
    kind = f"BENCH-{uuid.uuid4().hex[:6]}"
    _run(store, args.tasks, kind)
    metrics = DatabaseMetrics(store, ttl=0)  # type: ignore[arg-type]
    for label, extra in (("first scrape", 0), ("nothing new", 0), ("+1000 tasks", 1000)):
        if extra:
            _run(store, extra, kind)
        started = time.perf_counter()
        families = list(metrics.collect())
        took = time.perf_counter() - started
        print(f"{label:>14}: {took * 1000:8.1f} ms ({len(families)} families)")
    store.close()


if __name__ == "__main__":
    main()
