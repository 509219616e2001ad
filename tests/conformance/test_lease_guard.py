"""The database's lease transition guard equals the Python table, pair by pair (the SQLite
guard is two comparisons since migration 0010, not a list of pairs)."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

from creep import Creep
from creep.domain.lease import LEASE_TRANSITIONS, LeaseStatus

COLS = ("tenant_id, task_id, asset_id, acquired_at, expires_at, released_at, cost, currency, "
        "claim_token, hint_index")


def _runner(app: Creep) -> tuple[Callable[[str, tuple[Any, ...]], None], Any]:
    store: Any = app.store
    if store.dialect == "sqlite":
        conn = store._conn()

        def run_sqlite(sql: str, params: tuple[Any, ...]) -> None:
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.execute(sql, params)
            except Exception:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

        return run_sqlite, None
    holder = store.pool.connection()
    pg = holder.__enter__()

    def run_pg(sql: str, params: tuple[Any, ...]) -> None:
        with pg.transaction():
            pg.execute(sql.replace("?", "%s"), params)

    return run_pg, holder


def test_lease_guard_matches_table_for_every_pair(db_url: str) -> None:
    app = Creep(db_url)
    app.import_assets([{"tenant_id": "t", "sku_category": "RAW_NET", "sku_code": "ip.1",
                        "max_concurrency": 1}])
    app.submit(tenant_id="t", task_type="X",
               resource_hints=[{"sku_category": "RAW_NET", "sku_code": "ip.1"}])
    claimed = app.store.task_claim("w", ["X"], 1, app.clock.now(), 60)
    assert len(claimed) == 1
    template = app.list_leases()[0].lease_id
    run, holder = _runner(app)
    try:
        for old in LeaseStatus:
            for new in LeaseStatus:
                lease_id = str(uuid.uuid4())
                run(f"INSERT INTO leases (lease_id, status, {COLS}) SELECT ?, ?, {COLS} "
                    "FROM leases WHERE lease_id = ?", (lease_id, old.value, template))
                try:
                    run("UPDATE leases SET status = ? WHERE lease_id = ?", (new.value, lease_id))
                    allowed = True
                except Exception as exc:
                    assert "illegal" in str(exc) and "transition" in str(exc), exc
                    allowed = False
                assert allowed == (old is new or new in LEASE_TRANSITIONS[old]), (old, new)
    finally:
        if holder is not None:
            holder.__exit__(None, None, None)
        app.close()
