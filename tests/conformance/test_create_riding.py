"""task_create_many with writes riding along (the API's group commit of creates and their
audit rows): new tasks are created, a known idempotency key replays, and each riding write
is committed exactly once, whichever way the store wrote the batch."""

from __future__ import annotations

import uuid
from typing import Any

from creep import Creep
from creep.domain.task_spec import validate_task_spec
from creep.ports import TaskFilter
from creep.ports_api import AuditFilter, AuditRow
from creep.storage import pending_writes


class _AuditOnce:
    """A riding write that inserts one audit row."""

    def __init__(self, app: Creep, resource_id: str) -> None:
        now = app.clock.now()
        self.row = AuditRow(
            id=str(uuid.uuid4()), timestamp_ms=int(now.timestamp() * 1000), action="created",
            resource_type="task", resource={"type": "task", "identifier": resource_id, "data": {}},
            user={"uid": "k1", "username": "test", "type": "service"}, tenant_id="t1",
            diff_object={}, client_ip=None, user_agent=None, request_method="POST",
            request_id=None, data={}, created_at=now,
        )

    def apply(self, store: Any, conn: Any) -> bool:
        store._api_insert_audits(conn, [self.row])
        return True


def _spec(app: Creep, key: str, **extra: Any) -> Any:
    fields = {"task_type": "A", "tenant_id": "t1", "idempotency_key": key, "tags": ["x"],
              "input_payload": {"k": key}, **extra}
    return validate_task_spec(fields, now=app.clock.now())


def _audited(app: Creep, resource_id: str) -> int:
    rows = app.store.audit_list(AuditFilter(resource_id=resource_id))  # type: ignore[attr-defined]
    return len(rows)


def test_batch_of_new_and_replayed_tasks_commits_each_riding_write_once(db_url: str) -> None:
    app = Creep(db_url)
    try:
        store: Any = app.store
        [existing] = store.task_create_many([_spec(app, "old")], app.clock.now())

        fresh = [_spec(app, "new1"), _spec(app, "new2", priority=7)]
        writes = [_AuditOnce(app, s.task_id) for s in fresh]
        with pending_writes.riding(*writes):
            created = store.task_create_many(fresh, app.clock.now())
        assert [t.task_id for t in created] == [s.task_id for s in fresh]
        assert not any(t.replayed for t in created) and created[1].priority == 7
        assert [_audited(app, s.task_id) for s in fresh] == [1, 1]

        # A known key in the batch: the new task is created, the old one replayed, and the
        # riding write is committed once (not lost, not doubled) by whatever path wrote it.
        mixed = [_spec(app, "new3"), _spec(app, "old")]
        write = _AuditOnce(app, mixed[0].task_id)
        with pending_writes.riding(write) as queue:
            out = store.task_create_many(mixed, app.clock.now())
            assert queue == []
        assert out[0].task_id == mixed[0].task_id and not out[0].replayed
        assert out[1].task_id == existing.task_id and out[1].replayed
        assert _audited(app, mixed[0].task_id) == 1
        listed = {t.idempotency_key for t in store.task_list(TaskFilter(tenant_id="t1"))}
        assert listed == {"old", "new1", "new2", "new3"}
    finally:
        app.close()


class _CreatedAudits:
    """Audit rows kept only for the tasks the transaction creates, which a store may write
    within its task insert (created_task_audits, as the API's CreatedTaskAudits)."""

    def __init__(self, app: Creep, resource_ids: list[str]) -> None:
        self.now = app.clock.now()
        self.rows = [_AuditOnce(app, r).row for r in resource_ids]
        for row in self.rows:
            row.created_at = self.now

    def created_task_audits(self) -> list[AuditRow]:
        return self.rows

    def apply(self, store: Any, conn: Any) -> bool:
        store._api_insert_audits(conn, self.rows, created_at=self.now)
        return True


def test_audit_rows_of_created_tasks_only_whichever_path_wrote_them(db_url: str) -> None:
    app = Creep(db_url)
    try:
        store: Any = app.store
        [existing] = store.task_create_many([_spec(app, "old")], app.clock.now())

        fresh = [_spec(app, "new1"), _spec(app, "new2")]
        write = _CreatedAudits(app, [s.task_id for s in fresh])
        with pending_writes.riding(write) as queue:
            created = store.task_create_many(fresh, write.now)
            assert queue == []
        assert not any(t.replayed for t in created)
        assert [_audited(app, s.task_id) for s in fresh] == [1, 1]

        # A replayed key: no audit row for it (its task id was never stored), one for the new.
        mixed = [_spec(app, "new3"), _spec(app, "old")]
        write = _CreatedAudits(app, [s.task_id for s in mixed])
        with pending_writes.riding(write) as queue:
            out = store.task_create_many(mixed, write.now)
            assert queue == []
        assert out[1].task_id == existing.task_id and out[1].replayed
        assert [_audited(app, s.task_id) for s in mixed] == [1, 0]
        assert _audited(app, existing.task_id) == 0
    finally:
        app.close()
