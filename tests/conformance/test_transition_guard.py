"""The database's transition guard equals the Python transition table, pair by pair.

The guard has fast paths for the hot transitions (migration 0006_queue_speed); this checks every one of
the 64 (old, new) status pairs against the table by raw SQL, on both backends.
"""

from __future__ import annotations

import uuid

from creep import Creep, TaskStatus
from creep.domain.task import TASK_TRANSITIONS


def test_guard_matches_table_for_every_pair(db_url: str) -> None:
    app = Creep(db_url)
    template = app.submit(task_type="X")
    store = app.store
    outcomes: dict[tuple[str, str], bool] = {}
    for old in TaskStatus:
        for new in TaskStatus:
            new_id = str(uuid.uuid4())
            key = f"guard-{new_id}"
            if store.dialect == "sqlite":
                conn = store._conn()  # type: ignore[attr-defined]
                conn.execute("BEGIN")
                conn.execute(
                    "CREATE TEMP TABLE IF NOT EXISTS tmp_task AS SELECT * FROM tasks WHERE 0"
                )
                conn.execute("DELETE FROM tmp_task")
                conn.execute("INSERT INTO tmp_task SELECT * FROM tasks WHERE task_id = ?",
                             (template.task_id,))
                conn.execute("UPDATE tmp_task SET task_id = ?, idempotency_key = ?, status = ?",
                             (new_id, key, old.value))
                # Generated columns (has_hints) take no value: copy the stored ones only.
                cols = ", ".join(
                    r[1] for r in conn.execute("PRAGMA table_xinfo(tasks)") if r[6] == 0
                )
                conn.execute(f"INSERT INTO tasks ({cols}) SELECT {cols} FROM tmp_task")
                conn.execute("COMMIT")
                try:
                    conn.execute("UPDATE tasks SET status = ? WHERE task_id = ?",
                                 (new.value, new_id))
                    outcomes[(old, new)] = True
                except Exception as exc:
                    assert "illegal task transition" in str(exc)
                    outcomes[(old, new)] = False
            else:
                import psycopg

                with store.pool.connection() as conn:  # type: ignore[attr-defined]
                    cols = ", ".join(
                        r[0] for r in conn.execute(
                            "SELECT column_name FROM information_schema.columns WHERE "
                            "table_name = 'tasks' AND table_schema = current_schema() AND "
                            "is_generated = 'NEVER' ORDER BY ordinal_position"
                        )
                    )
                    conn.execute(
                        f"INSERT INTO tasks ({cols}) SELECT {cols} FROM (SELECT "
                        "(jsonb_populate_record(t, jsonb_build_object("
                        "'task_id', %s::text, 'idempotency_key', %s::text, 'status', %s::text"
                        "))).* FROM tasks t WHERE task_id = %s) x",
                        (new_id, key, old.value, template.task_id),
                    )
                    conn.commit()
                    try:
                        conn.execute("UPDATE tasks SET status = %s WHERE task_id = %s",
                                     (new.value, new_id))
                        conn.commit()
                        outcomes[(old, new)] = True
                    except psycopg.errors.CheckViolation as exc:
                        conn.rollback()
                        assert "illegal task transition" in str(exc)
                        outcomes[(old, new)] = False
    app.close()
    expected = {(o, n): n in TASK_TRANSITIONS[o] for o in TaskStatus for n in TaskStatus}
    # A self-"transition" is no status change at all, which the guard lets through as a
    # plain update; Python refuses it (check_transition), the database has nothing to check.
    for status in TaskStatus:
        expected[(status, status)] = True
    assert outcomes == expected
