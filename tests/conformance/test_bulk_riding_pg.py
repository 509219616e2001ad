"""PostgreSQL: writes riding along with a bulk submission (as the REST API's audit rows ride
with task creation) are kept only with the submission's own writes."""

from __future__ import annotations

from typing import Any

import pytest

import creep.app as app_module
from creep import Creep
from creep.domain.errors import IdempotencyConflict
from creep.storage import pending_writes


class _Mark:
    def apply(self, store: Any, conn: Any) -> bool:
        conn.execute("INSERT INTO riding_marks VALUES (1)")
        return True


def test_writes_riding_along_are_not_kept_when_the_submission_fails(
    pg_schema_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With writes riding along, chunks are written one after another: a conflict in the
    first chunk keeps neither its tasks nor the riding write."""
    monkeypatch.setattr(app_module, "SUBMIT_CHUNK", 256)
    app = Creep(pg_schema_url)
    try:
        with app.store.pool.connection() as conn:  # type: ignore[attr-defined]
            conn.execute("CREATE TABLE riding_marks (x int)")
        app.submit(tenant_id="t", env="prod", task_type="A", idempotency_key="taken", priority=1)
        orders: list[dict[str, Any]] = [
            {"tenant_id": "t", "env": "prod", "idempotency_key": f"k{i}", "task_type": "A"}
            for i in range(600)
        ]
        orders[10] = {**orders[10], "idempotency_key": "taken", "priority": 2}
        with pending_writes.riding(_Mark()), pytest.raises(IdempotencyConflict):
            app.submit_many(orders)
        with app.store.pool.connection() as conn:  # type: ignore[attr-defined]
            row = conn.execute("SELECT count(*) FROM riding_marks").fetchone()
        assert row is not None and row[0] == 0
        assert len(app.list_tasks(limit=2000)) == 1
    finally:
        app.close()
