"""Queue benchmark: bulk and single enqueue rates, drain rate with one worker process, and
pickup latency with an idle worker.

    python bench/bench_queue.py --database-url sqlite:///./bench.db -n 50000
    python bench/bench_queue.py --database-url postgresql://127.0.0.1:5432/test -n 50000
    python bench/bench_queue.py ... --preload 1000000   # drain with 1M finished tasks stored

Durability is as shipped: SQLite WAL with synchronous=FULL, PostgreSQL with fsync and
synchronous_commit on. Task events are always written.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from creep import Creep, TaskContext  # noqa: E402


def fresh_url(url: str | None, workdir: Path) -> tuple[str, Any]:
    """A clean database for one run: a new SQLite file or a new PostgreSQL schema."""
    if url is None or url.startswith("sqlite"):
        return f"sqlite:///{workdir}/bench.db", None
    import psycopg

    schema = f"creep_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    sep = "&" if "?" in url else "?"

    def drop() -> None:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")

    return f"{url}{sep}options=-csearch_path%3D{schema}", drop


def make_app(url: str) -> Creep:
    app = Creep(url)

    @app.handler("NOOP")
    async def noop(ctx: TaskContext) -> object:
        return None

    return app


def orders(n: int, tag: str, priorities: int = 100) -> list[dict[str, Any]]:
    """`n` orders with priorities i % `priorities` (the default spreads them over 100 levels;
    1 puts every task at priority 0, so claims take tasks in submission order)."""
    return [
        {"tenant_id": "bench", "env": "prod", "idempotency_key": f"{tag}-{i}",
         "task_type": "NOOP", "priority": i % priorities, "input_payload": {"i": i}}
        for i in range(n)
    ]


def preload_finished(app: Creep, count: int) -> float:
    """Store `count` finished tasks (with their events), as a long-running system would."""
    started = time.perf_counter()
    done = 0
    while done < count:
        chunk = min(50_000, count - done)
        app.submit_many(orders(chunk, f"old{done}"))
        claimed = 0
        while claimed < chunk:
            batch = app.store.task_claim("preload", ["NOOP"], 5000, app.clock.now(), 600)
            from creep.domain.outcomes import Outcome, OutcomeKind, resolve
            from creep.ports import Completion

            comps = []
            for c in batch:
                o = Outcome(c.task.task_id, c.claim_token, OutcomeKind.SUCCEEDED, result=None)
                comps.append(Completion(o, resolve(o, attempt=1, max_attempts=4,
                                                   now=app.clock.now(), backoff=app.backoff)))
            app.store.task_complete_many(comps, app.clock.now())
            claimed += len(batch)
        done += chunk
    return time.perf_counter() - started


def measure_enqueue(app: Creep, n: int, singles: int, priorities: int) -> dict[str, float]:
    app.store.schema_version()  # connect and migrate before the clock starts, as the drain does
    # The orders exist before the clock starts, as a caller's data would: making 50,000
    # dicts is the benchmark's work, not creep's.
    bulk_orders, single_orders = orders(n, "bulk", priorities), orders(singles, "single", priorities)
    started = time.perf_counter()
    app.submit_many(bulk_orders)
    bulk = n / (time.perf_counter() - started)
    started = time.perf_counter()
    for order in single_orders:
        app.submit(**order)
    single = singles / (time.perf_counter() - started)
    return {"bulk_enqueue_per_s": bulk, "single_enqueue_per_s": single}


def measure_drain(
    url: str, n: int, concurrency: int, batch_size: int | None = None
) -> dict[str, float]:
    """Drain with one worker process (this one), timed from start to empty queue. Also the
    worker process's CPU per task (all threads), steadier than wall time on a busy machine."""
    app = make_app(url)
    queued = len(app.list_tasks(status="QUEUED", limit=n + 10_000))
    started, cpu = time.perf_counter(), time.process_time()
    stats = app.run_worker(burst=True, concurrency=concurrency, batch_size=batch_size,
                           install_signals=False)
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    app.close()
    assert stats["completed"] >= queued, stats
    return {"drain_per_s": stats["completed"] / elapsed,
            "drain_worker_cpu_us_per_task": cpu / stats["completed"] * 1e6}


PICKUP_WORKER = """
import sys, time, os
sys.path.insert(0, {src!r})
from creep import Creep
app = Creep({url!r})
out = open({log!r}, "a", buffering=1)
@app.handler("PING")
async def ping(ctx):
    out.write(f"{{ctx.task.input_payload['i']}} {{time.time()}}\\n")
app.run_worker(concurrency=10)
"""


def measure_pickup(url: str, samples: int, workdir: Path) -> dict[str, float]:
    log = workdir / "pickup.log"
    script = workdir / "pickup_worker.py"
    script.write_text(PICKUP_WORKER.format(src=str(ROOT / "src"), url=url, log=str(log)))
    worker = subprocess.Popen([sys.executable, str(script)])
    app = Creep(url)
    try:
        time.sleep(1.5)  # let the worker start and go idle
        sent: dict[int, float] = {}
        for i in range(samples):
            sent[i] = time.time()
            app.submit(task_type="PING", input_payload={"i": i})
            time.sleep(0.02)
        deadline = time.time() + 30
        while time.time() < deadline:
            lines = log.read_text().splitlines() if log.exists() else []
            if len(lines) >= samples:
                break
            time.sleep(0.1)
    finally:
        worker.terminate()
        worker.wait(30)
        app.close()
    got = {int(a): float(b) for a, b in (line.split() for line in log.read_text().splitlines())}
    lat = sorted((got[i] - sent[i]) * 1000 for i in got)
    return {
        "pickup_p50_ms": statistics.median(lat),
        "pickup_p99_ms": lat[min(len(lat) - 1, int(len(lat) * 0.99))],
        "pickup_samples": len(lat),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--database-url", default=None)
    parser.add_argument("-n", type=int, default=50_000)
    parser.add_argument("--singles", type=int, default=2_000)
    parser.add_argument("--concurrency", type=int, default=1000,
                        help="the worker's concurrency (it claims up to that many per statement)")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="most tasks per claim statement (default: the concurrency)")
    parser.add_argument("--preload", type=int, default=0,
                        help="finished tasks stored before the drain")
    parser.add_argument("--pickup-samples", type=int, default=300)
    parser.add_argument("--skip-pickup", action="store_true")
    parser.add_argument("--priorities", type=int, default=100,
                        help="distinct priorities of the enqueued tasks (i %% N); 1 = all equal")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        url, drop = fresh_url(args.database_url, workdir)
        try:
            results: dict[str, Any] = {"backend": url.split(":")[0], "n": args.n,
                                       "preload": args.preload, "priorities": args.priorities}
            app = make_app(url)
            if args.preload:
                results["preload_s"] = preload_finished(app, args.preload)
            results.update(measure_enqueue(app, args.n, args.singles, args.priorities))
            app.close()
            results.update(measure_drain(url, args.n, args.concurrency, args.batch_size))
            if not args.skip_pickup:
                results.update(measure_pickup(url, args.pickup_samples, workdir))
        finally:
            if drop:
                drop()
    print(json.dumps({k: round(v, 2) if isinstance(v, float) else v
                      for k, v in results.items()}, indent=2))


if __name__ == "__main__":
    main()
