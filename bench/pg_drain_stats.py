"""PostgreSQL drain cost, measured on this run's objects only (other benchmarks may share the
server): worker CPU and PG backend CPU per task, WAL bytes per task on this schema's relations
(pg_waldump over the drain's LSN range), and n_tup_upd / n_tup_hot_upd of the drained tables.

    python bench/pg_drain_stats.py --database-url postgresql://127.0.0.1:5432/test -n 50000
    python bench/pg_drain_stats.py ... --preload 200000

Needs pg_waldump and read access to the server's pg_wal (same machine, root or postgres).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_queue import make_app, measure_drain, orders, preload_finished

_TICK = os.sysconf("SC_CLK_TCK")
_REL = re.compile(r"rel (\d+)/(\d+)/(\d+)")
_LEN = re.compile(r"len \(rec/tot\):\s*\d+/\s*(\d+)")


def _cpu(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return -1.0
    return (int(fields[11]) + int(fields[12])) / _TICK


def scratch_schema(base: str) -> tuple[str, str, psycopg.Connection[Any]]:
    """A new schema for one run: its name, a URL into it whose connections carry the name as
    application_name (to find their backends), and an autocommit admin connection."""
    schema = f"creep_pghot_{uuid.uuid4().hex[:8]}"
    admin = psycopg.connect(base, autocommit=True)
    admin.execute(f"CREATE SCHEMA {schema}")
    sep = "&" if "?" in base else "?"
    return schema, f"{base}{sep}options=-csearch_path%3D{schema}&application_name={schema}", admin


class BackendCpu:
    """Polls the CPU time of this run's backends (found by application_name)."""

    def __init__(self, url: str, app_name: str) -> None:
        self.url, self.app_name, self.seen = url, app_name, {}  # type: ignore[var-annotated]
        self.base: dict[int, float] = {}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _pids(self, conn: psycopg.Connection[Any]) -> list[int]:
        rows = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE application_name = %s", (self.app_name,)
        ).fetchall()
        return [r[0] for r in rows]

    def _run(self) -> None:
        with psycopg.connect(self.url, autocommit=True) as conn:
            while not self.stop.is_set():
                for pid in self._pids(conn):
                    c = _cpu(pid)
                    if c >= 0:
                        self.base.setdefault(pid, c if not self.seen else 0.0)
                        self.seen[pid] = c
                self.stop.wait(0.05)

    def start(self) -> None:
        with psycopg.connect(self.url, autocommit=True) as conn:
            for pid in self._pids(conn):
                self.base[pid] = self.seen[pid] = _cpu(pid)
        self.seen.setdefault(-1, 0.0)
        self.thread.start()

    def total(self) -> float:
        self.stop.set()
        self.thread.join()
        return sum(v - self.base.get(k, 0.0) for k, v in self.seen.items() if k != -1)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--database-url", default="postgresql://127.0.0.1:5432/test")
    p.add_argument("-n", type=int, default=50_000)
    p.add_argument("--concurrency", type=int, default=500)
    p.add_argument("--preload", type=int, default=0)
    p.add_argument("--priorities", type=int, default=100)
    p.add_argument("--fillfactor", type=int, default=0, help="ALTER tasks' fillfactor first")
    p.add_argument("--breakdown", action="store_true", help="WAL per relation and record")
    p.add_argument("--waldump", default="/usr/lib/postgresql/15/bin/pg_waldump")
    args = p.parse_args()
    base = args.database_url
    schema, url, admin = scratch_schema(base)
    out: dict[str, Any] = {"n": args.n, "preload": args.preload,
                           "priorities": args.priorities, "fillfactor": args.fillfactor}
    try:
        app = make_app(url)
        app.store.migrate()
        if args.fillfactor:
            with psycopg.connect(url, autocommit=True) as conn:
                conn.execute(f"ALTER TABLE tasks SET (fillfactor = {args.fillfactor})")
        if args.preload:
            out["preload_s"] = round(preload_finished(app, args.preload), 1)
        app.submit_many(orders(args.n, "bulk", args.priorities))
        app.close()
        admin.execute("CHECKPOINT")  # full-page images then count as they would in steady state
        rels = {int(r[0]): r[1] for r in admin.execute(
            "SELECT c.relfilenode, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = %s OR c.oid IN (SELECT reltoastrelid FROM pg_class c2 JOIN "
            "pg_namespace n2 ON n2.oid = c2.relnamespace WHERE n2.nspname = %s)",
            (schema, schema),
        )}
        stats_sql = (
            "SELECT relname, n_tup_upd, n_tup_hot_upd, n_tup_ins, n_tup_del "
            "FROM pg_stat_user_tables WHERE schemaname = %s"
        )
        before = {r[0]: r[1:] for r in admin.execute(stats_sql, (schema,))}
        out["tasks_bytes_per_row"] = int(admin.execute(  # type: ignore[index]
            f"SELECT pg_relation_size('{schema}.tasks') / (SELECT count(*) FROM {schema}.tasks)"
        ).fetchone()[0])
        lsn0 = admin.execute("SELECT pg_current_wal_lsn()").fetchone()[0]  # type: ignore[index]
        cpu = BackendCpu(base, schema)
        cpu.start()
        out.update(measure_drain(url, args.n, args.concurrency))
        backend = cpu.total()
        lsn1 = admin.execute("SELECT pg_current_wal_lsn()").fetchone()[0]  # type: ignore[index]
        time.sleep(1.5)  # cumulative statistics are flushed at most once a second
        after = {r[0]: r[1:] for r in admin.execute(stats_sql, (schema,))}
        out["pg_backend_cpu_us_per_task"] = round(backend / args.n * 1e6, 1)
        out["server_wal_bytes_per_task"] = round(int(admin.execute(
            "SELECT %s::pg_lsn - %s::pg_lsn", (lsn1, lsn0)).fetchone()[0]) / args.n)  # type: ignore[index]
        datadir = admin.execute("SHOW data_directory").fetchone()[0]  # type: ignore[index]
        dump = subprocess.run(
            [args.waldump, "-p", f"{datadir}/pg_wal", "-s", str(lsn0), "-e", str(lsn1)],
            capture_output=True, text=True,
        )
        mine = records = 0
        by: dict[str, list[int]] = {}
        for line in dump.stdout.splitlines():
            rel = _REL.search(line)
            if rel and int(rel.group(3)) in rels:
                length = _LEN.search(line)
                size = int(length.group(1)) if length else 0
                mine += size
                records += 1
                kind = f"{rels[int(rel.group(3))]}:{line.split(',')[0].split()[1]}:" + (
                    line.split("desc: ")[1].split()[0] if "desc: " in line else "?")
                agg = by.setdefault(kind, [0, 0])
                agg[0] += 1
                agg[1] += size
        if args.breakdown:
            out["wal_by_relation_record"] = {
                k: [round(v[0] / args.n, 2), round(v[1] / args.n)]
                for k, v in sorted(by.items(), key=lambda kv: -kv[1][1])
            }
        out["schema_wal_bytes_per_task"] = round(mine / args.n)
        out["schema_wal_records_per_task"] = round(records / args.n, 2)
        for table in ("tasks", "task_queue", "task_events"):
            if table in after:
                d = [a - b for a, b in zip(after[table], before.get(table, (0, 0, 0, 0)), strict=True)]
                out[f"{table}_upd_hot_ins_del"] = d
    finally:
        admin.execute(f"DROP SCHEMA {schema} CASCADE")
    print(json.dumps({k: round(v, 1) if isinstance(v, float) else v for k, v in out.items()}))


if __name__ == "__main__":
    main()
