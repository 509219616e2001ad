"""The audit log's retention runs as a built-in schedule (90 days by default, never less)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import pytest

from creep import Creep
from creep.domain.clock import FrozenClock
from creep.domain.execution import ExecutionState
from creep.ports_api import ApiStore, AuditFilter, AuditRow
from creep.storage import pending_writes

T0 = datetime(2026, 1, 1, tzinfo=UTC)


@dataclass
class _InsertAudits:
    rows: list[AuditRow]

    def apply(self, store: Any, conn: Any) -> bool:
        store._api_insert_audits(conn, self.rows)
        return True


def _row(at: datetime) -> AuditRow:
    return AuditRow(
        id=str(uuid.uuid4()), timestamp_ms=int(at.timestamp() * 1000), action="created",
        resource_type="task", resource={"type": "task", "identifier": "x", "data": {}},
        user={"uid": "k", "username": "n", "type": "service"}, tenant_id="t",
        diff_object={}, client_ip=None, user_agent=None, request_method="POST",
        request_id=None, data={}, created_at=at,
    )


@pytest.fixture
def app(db_url: str) -> Iterator[Creep]:
    creep_app = Creep(db_url, clock=FrozenClock(T0))
    yield creep_app
    creep_app.close()


def test_audit_retention_builtin_schedule(app: Creep) -> None:
    store = cast(ApiStore, app.store)
    old, recent = _row(T0 - timedelta(days=100)), _row(T0 - timedelta(days=10))
    with pending_writes.riding(_InsertAudits([old, recent])):
        store.commit_pending()
    app.scheduler(holder_id="R").run_once()  # installs the built-in schedules
    [job] = [s for s in app.list_schedules(tenant_id="_system")
             if s.name == "creep.retention.audit"]
    assert job.data == '{"older_than_days":90.0}' and job.cron_expr == "0 2 * * *"

    run = app.trigger_schedule(job.uid, trigger_by="ops")
    assert run.state is ExecutionState.SUCCESS and run.result == '{"removed": 1}'
    assert [a.id for a in store.audit_list(AuditFilter())] == [recent.id]
    # A shorter period acts as 90 days: the database keeps younger audit rows anyway.
    app.update_schedule(job.uid, data={"older_than_days": 1})
    run = app.trigger_schedule(job.uid, trigger_by="ops")
    assert run.state is ExecutionState.SUCCESS and run.result == '{"removed": 0}'
    assert [a.id for a in store.audit_list(AuditFilter())] == [recent.id]
