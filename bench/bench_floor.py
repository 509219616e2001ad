"""The SQL floor of a drain on SQLite: the statements a plain and a one-lease drain cannot do
without, issued by hand against creep's own schema (its tables, indexes, CHECKs and append-only
triggers), in batched rounds, with no worker, no handler and no Python between statements
beyond binding. What it reports is a ceiling for the real drains, and the ceiling of their
ratio: bench_assets.py's target (a one-lease drain at half the plain rate) cannot be met by
any worker on a schema whose floor ratio is below it.

    python bench/bench_floor.py -n 20000 [--batch 500] [--repeat 3]

Each round, in one transaction (as creep's SQLite worker does): the previous round's tasks
RUNNING -> SUCCESS with their `succeeded` events, then the next `batch` QUEUED tasks claimed
(RUNNING, `started` events). A leased round adds what issue 3 requires per lease: the lease
row (ACTIVE, then RELEASED), its ledger COST entry, the ALLOCATED, TASK_SUCCESS and RELEASED
asset events, the task's lease_ids and each asset's concurrency, written once per round.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
import tempfile
import time
from pathlib import Path
from statistics import median
from typing import Any

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent / "src"))
sys.path.insert(0, str(ROOT))

from bench_assets import orders  # noqa: E402
from creep import Creep  # noqa: E402
from creep.domain.ids import uuid7_many  # noqa: E402

_ASSETS = 100
_PER_ASSET = 5


def prepare(path: Path, n: int, hinted: bool) -> None:
    """A database migrated by creep, with the pool and `n` queued tasks submitted through it."""
    app = Creep(f"sqlite:///{path}")
    app.import_assets([
        {"tenant_id": "bench", "sku_category": "RAW_NET", "sku_code": f"ip.bench.{i}",
         "max_concurrency": _PER_ASSET, "cost_per_lease": "0.01"}
        for i in range(_ASSETS)
    ])
    for start in range(0, n, 5000):
        app.submit_many(orders(min(5000, n - start), f"f{start}", hinted))
    app.close()


def _insert(conn: sqlite3.Connection, table: str, columns: str, rows: list[tuple[Any, ...]]) -> None:
    width = columns.count(",") + 1
    one = "(" + ", ".join("?" * width) + ")"
    per = 32766 // width
    for start in range(0, len(rows), per):
        chunk = rows[start:start + per]
        conn.execute(f"INSERT INTO {table} ({columns}) VALUES {', '.join([one] * len(chunk))}",
                     [v for row in chunk for v in row])


def drain(
    path: Path, batch: int, hinted: bool, without: frozenset[str] = frozenset()
) -> tuple[float, float, int]:
    """Drain every queued task of the database; (tasks per second, CPU µs per task, tasks
    finished). Everything runs in this thread, SQLite included, so the CPU time is all the
    drain's work, and steadier than the rate on a shared machine."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")  # what creep ships
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute("PRAGMA cache_size=-65536")
    assets = [r[0] for r in conn.execute("SELECT asset_id FROM assets ORDER BY asset_id")]
    running: list[tuple[str, str, int, str, str]] = []  # task, tenant, priority, lease, asset
    done = 0
    slot = 0
    started, cpu = time.perf_counter(), time.process_time()
    while True:
        now = int(time.time() * 1_000_000)
        conn.execute("BEGIN IMMEDIATE")
        if running:
            ids = json.dumps([r[0] for r in running])
            conn.execute(
                "UPDATE tasks SET status = 'SUCCESS', result_code = 'OK', finished_at = ?1, "
                "updated_at = ?1, task_version = task_version + 1, claim_token = NULL "
                "WHERE task_id IN (SELECT value FROM json_each(?2))", (now, ids))
            _insert(conn, "task_events", "task_id, tenant_id, event_type, from_status, "
                    "to_status, attempt, created_at, task_priority",
                    [(t, ten, "succeeded", "RUNNING", "SUCCESS", 1, now, p)
                     for t, ten, p, _, _ in running])
            if hinted:
                eids = uuid7_many(2 * len(running))
                rows: list[tuple[Any, ...]] = []
                for i, (t, ten, p, lease, asset) in enumerate(running):
                    rows.append((eids[2 * i], ten, asset, t, lease, t, None, "TASK_SUCCESS",
                                 "SYSTEM", "INFO", "IN_USE", "IN_USE", "task SUCCESS", now, now,
                                 '{"health_score_before":100,"health_score_after":100}', p))
                    rows.append((eids[2 * i + 1], ten, asset, t, lease, t, eids[2 * i],
                                 "RELEASED", "SYSTEM", "INFO", "IN_USE", "READY", "released",
                                 now, now, "{}", p))
                if "asset-events" not in without:
                    _insert(conn, "asset_events", _EVENT_COLUMNS, rows)
                conn.execute(
                    "UPDATE leases SET status = 'RELEASED', released_at = ? WHERE lease_id IN "
                    "(SELECT value FROM json_each(?)) AND status = 'ACTIVE'",
                    (now, json.dumps([r[3] for r in running])))
            done += len(running)
        claimed = conn.execute(
            "SELECT task_id, tenant_id, priority FROM tasks WHERE status = 'QUEUED' AND "
            f"has_hints = {'true' if hinted else 'false'} ORDER BY priority DESC, created_at "
            "LIMIT ?", (batch,)).fetchall()
        nxt: list[tuple[str, str, int, str, str]] = []
        if claimed:
            lease_ids = uuid7_many(3 * len(claimed)) if hinted else []
            for i, (t, ten, p) in enumerate(claimed):
                if hinted:
                    nxt.append((t, ten, p, lease_ids[3 * i], assets[slot % _ASSETS]))
                    slot += 1
                else:
                    nxt.append((t, ten, p, "", ""))
            conn.execute(
                "WITH r(task_id, lease_ids) AS (SELECT key, value FROM json_each(?1)) "
                "UPDATE tasks SET status = 'RUNNING', attempt = attempt + 1, started_at = ?2, "
                "updated_at = ?2, claimed_by = 'floor', claim_token = ?3, "
                "claim_expires_at = ?2 + 30000000, deadline_at = ?2 + timeout_ms * 1000, "
                "task_version = task_version + 1, lease_ids = r.lease_ids FROM r "
                "WHERE tasks.task_id = r.task_id",
                (json.dumps({t: ([lease] if hinted else []) for t, _, _, lease, _ in nxt}),
                 now, "token"))
            _insert(conn, "task_events", "task_id, tenant_id, event_type, from_status, "
                    "to_status, attempt, created_at, task_priority",
                    [(t, ten, "started", "QUEUED", "RUNNING", 1, now, p)
                     for t, ten, p, _, _ in nxt])
            if hinted:
                _insert(conn, "leases", "lease_id, tenant_id, task_id, asset_id, status, "
                        "acquired_at, expires_at, cost, currency, claim_token, hint_index, "
                        "task_priority",
                        [(lease, ten, t, asset, "ACTIVE", now, now + 30_000_000, "0.01", "USD",
                          "token", 0, p) for t, ten, p, lease, asset in nxt])
                if "ledger" not in without:
                    _insert(conn, "ledger_entries", "entry_id, tenant_id, task_id, asset_id, "
                            "lease_id, entry_type, amount, currency, description, "
                            "occurred_at, recorded_at, task_priority",
                            [(lease_ids[3 * i + 1], ten, t, asset, lease, "COST", "0.01", "USD",
                              "lease", now, now, p)
                             for i, (t, ten, p, lease, asset) in enumerate(nxt)])
                if "asset-events" not in without:
                    _insert(conn, "asset_events", _EVENT_COLUMNS,
                            [(lease_ids[3 * i + 2], ten, asset, t, lease, t, None, "ALLOCATED",
                              "SYSTEM", "INFO", "IN_USE", "IN_USE", f"leased to task {t}", now,
                              now, '{"hint_index":0,"worker_id":"floor"}', p)
                             for i, (t, ten, p, lease, asset) in enumerate(nxt)])
        if hinted and (running or nxt):
            # Each asset row written once per round: the releases and the new leases netted.
            delta: dict[str, int] = {}
            for *_, asset in running:
                delta[asset] = delta.get(asset, 0) - 1
            for *_, asset in nxt:
                delta[asset] = delta.get(asset, 0) + 1
            conn.execute(
                "WITH r(asset_id, d) AS (SELECT key, value FROM json_each(?1)) "
                "UPDATE assets SET current_concurrency = current_concurrency + r.d, "
                "status = CASE WHEN current_concurrency + r.d > 0 THEN 'IN_USE' ELSE 'READY' END, "
                "updated_at = ?2 FROM r WHERE assets.asset_id = r.asset_id",
                (json.dumps(delta), now))
        conn.execute("COMMIT")
        running = nxt
        if not running:
            break
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    conn.close()
    return done / elapsed, 1e6 * cpu / max(done, 1), done


_EVENT_COLUMNS = (
    "event_id, tenant_id, asset_id, task_id, lease_id, correlation_id, causation_id, "
    "event_type, source, severity, old_status, new_status, message, occurred_at, recorded_at, "
    "context, task_priority"
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-n", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=500,
                        help="tasks claimed (and completed) per round, as creep's worker at "
                             "bench_assets.py's concurrency")
    parser.add_argument("--without", default="",
                        help="comma-separated parts the leased round leaves out (asset-events, "
                             "ledger), to see what each costs; creep itself never skips them")
    parser.add_argument("--repeat", type=int, default=1,
                        help="plain/leased pairs, run alternately; medians are reported")
    args = parser.parse_args()
    without = frozenset(x for x in args.without.split(",") if x)
    unknown = without - {"asset-events", "ledger"}
    if unknown:
        parser.error(f"--without: unknown part(s) {', '.join(sorted(unknown))}")
    plains: list[tuple[float, float]] = []
    leaseds: list[tuple[float, float]] = []
    for _ in range(args.repeat):
        for hinted, out in ((False, plains), (True, leaseds)):
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / "floor.db"
                prepare(path, args.n, hinted)
                rate, cpu, done = drain(path, args.batch, hinted, without)
                assert done == args.n, (done, args.n)
                out.append((rate, cpu))
    plain, leased = median(r for r, _ in plains), median(r for r, _ in leaseds)
    plain_cpu, leased_cpu = median(c for _, c in plains), median(c for _, c in leaseds)
    print(json.dumps({
        "backend": "sqlite", "n": args.n, "batch": args.batch, "without": sorted(without),
        "floor_plain_per_s": round(plain, 1), "floor_one_lease_per_s": round(leased, 1),
        "floor_ratio": round(leased / plain, 3),
        "floor_plain_cpu_us_per_task": round(plain_cpu, 1),
        "floor_one_lease_cpu_us_per_task": round(leased_cpu, 1),
        # The ratio the rates would have if each drain ran alone on its core.
        "floor_cpu_ratio": round(plain_cpu / leased_cpu, 3),
        "runs": [{"plain": round(p[0], 1), "one_lease": round(x[0], 1),
                  "ratio": round(x[0] / p[0], 3), "cpu_ratio": round(p[1] / x[1], 3)}
                 for p, x in zip(plains, leaseds, strict=True)],
    }, indent=2))


if __name__ == "__main__":
    main()
