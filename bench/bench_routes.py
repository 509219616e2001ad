"""Exports and summaries of the asset/ledger routes against a real `creep server`: seeds N
ledger entries and N asset events for one tenant (through the Python API, on the server's
database), then times, over HTTP, the full CSV export of each, the paged JSON walk of the
ledger (1000 a page) and a grouped ledger summary.

    python bench/bench_routes.py                                         # SQLite, n=10000
    python bench/bench_routes.py --database-url postgresql://127.0.0.1:5432/test -n 10000

On PostgreSQL it works in a schema of its own (dropped at the end).
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from decimal import Decimal
from urllib.parse import quote

import httpx

ADMIN_KEY = "bench-admin-key-" + "r" * 24


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def seed(url: str, tenant: str, n: int) -> None:
    from creep import Creep
    from creep.asset_api import make_entry
    from creep.domain.ledger import LedgerEntry

    app = Creep(url)
    try:
        [asset] = app.import_assets([{"tenant_id": tenant, "sku_category": "RAW_NET",
                                      "sku_code": "ip.bench.1"}])
        now = app.clock.now()
        entries: list[LedgerEntry] = [
            make_entry(now, entry_type="REVENUE" if i % 3 else "ADJUSTMENT",
                       amount=Decimal(i % 97 + 1) / 100, currency="USD", tenant_id=tenant,
                       project_id=f"p{i % 10}", task_id=None, asset_id=None, lease_id=None,
                       description=None, occurred_at=None)
            for i in range(n)
        ]
        for e in entries:  # one transaction each, as the API writes them
            app.store.ledger_record(e)
        for i in range(n):
            app.report_asset_event(tenant_id=tenant, asset_id=asset.asset_id,
                                   event_type="PROBE_OK", correlation_id=f"c{i % 100}",
                                   latency_ms=i % 500)
    finally:
        app.close()


def timed(label: str, fn: object) -> None:
    start = time.perf_counter()
    detail = fn()  # type: ignore[operator]
    print(f"{label:<44} {time.perf_counter() - start:7.3f} s  {detail}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--database-url", default=None)
    parser.add_argument("-n", type=int, default=10_000)
    args = parser.parse_args()
    drop = None
    if args.database_url and args.database_url.startswith("postgres"):
        import psycopg

        schema = f"bench_routes_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(args.database_url, autocommit=True) as conn:
            conn.execute(f'CREATE SCHEMA "{schema}"')
        sep = "&" if "?" in args.database_url else "?"
        url = f"{args.database_url}{sep}options={quote(f'-csearch_path={schema}')}"
        base = args.database_url

        def drop() -> None:
            with psycopg.connect(base, autocommit=True) as conn:
                conn.execute(f'DROP SCHEMA "{schema}" CASCADE')
    else:
        url = f"sqlite:///{tempfile.mkdtemp()}/bench.db"
    port = free_port()
    env = {**os.environ, "CREEP_DATABASE_URL": url, "CREEP_ADMIN_KEY": ADMIN_KEY,
           "CREEP_PORT": str(port), "CREEP_LOG_LEVEL": "WARNING"}
    proc = subprocess.Popen([sys.executable, "-m", "creep.cli", "server"], env=env)
    base_url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                if httpx.get(f"{base_url}/health/live", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        admin = httpx.Client(base_url=base_url, timeout=300,
                             headers={"Authorization": f"Bearer {ADMIN_KEY}"})
        tenant = f"bench-{uuid.uuid4().hex[:6]}"
        admin.post("/v1/tenants", json={"tenant_id": tenant}).raise_for_status()
        key = admin.post("/v1/keys", json={"name": "b", "tenant_id": tenant}).json()["key"]
        start = time.perf_counter()
        seed(url, tenant, args.n)
        print(f"backend {url.split(':')[0]}, n={args.n}: seeded in "
              f"{time.perf_counter() - start:.1f} s")
        c = httpx.Client(base_url=base_url, timeout=300,
                         headers={"Authorization": f"Bearer {key}"})

        def csv_rows(path: str) -> object:
            r = c.get(path, params={"format": "csv"})
            r.raise_for_status()
            return f"{r.text.count(chr(10)) - 1} rows, {len(r.content) / 1e6:.1f} MB"

        def walk() -> object:
            pages, cursor = 0, None
            while True:
                params = {"limit": 1000, **({"cursor": cursor} if cursor else {})}
                page = c.get("/v1/ledger", params=params).json()
                pages += 1
                cursor = page["next_cursor"]
                if not cursor:
                    return f"{pages} pages"

        def summary() -> object:
            r = c.get("/v1/ledger/summary", params={"group_by": "project_id,currency"})
            r.raise_for_status()
            return f"{len(r.json()['items'])} groups"

        for path in ("/v1/ledger", "/v1/events"):  # warm up (first-request costs)
            c.get(path, params={"limit": 1}).raise_for_status()
        timed("GET /v1/ledger?format=csv (all)", lambda: csv_rows("/v1/ledger"))
        timed("GET /v1/events?format=csv (all)", lambda: csv_rows("/v1/events"))
        timed("GET /v1/ledger JSON, 1000 a page (all)", walk)
        timed("GET /v1/ledger/summary group_by=project_id,currency", summary)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        if drop is not None:
            drop()


if __name__ == "__main__":
    main()
