"""PostgreSQL: a migration that meets a busy worker in a lock cycle is tried again, and the
worker's transaction goes through (migration 0014 locks tasks, then alters task_queue, which
a claim has read before locking tasks rows)."""

from __future__ import annotations

import threading
import time

import psycopg

from creep.storage import open_store


def test_a_migration_caught_in_a_lock_cycle_with_a_claim_is_tried_again(
    pg_schema_url: str,
) -> None:
    store = open_store(pg_schema_url)
    store.migrate(target=13)
    store.close()
    with psycopg.connect(pg_schema_url) as claim:
        # As a claim does: read task_queue, lock tasks rows ...
        claim.execute(
            "SELECT t.task_id FROM task_queue q JOIN tasks t ON t.task_id = q.task_id "
            "WHERE q.status = 'QUEUED' FOR UPDATE OF t SKIP LOCKED"
        ).fetchall()
        outcome: dict[str, object] = {}

        def migrate() -> None:
            s = open_store(pg_schema_url)
            try:
                outcome["applied"] = s.migrate(target=14)
            except Exception as exc:  # reported below
                outcome["error"] = exc
            finally:
                s.close()

        thread = threading.Thread(target=migrate)
        thread.start()
        time.sleep(0.5)  # the migration now holds tasks and waits for task_queue
        # ... then update them: a lock cycle with the migration, which PostgreSQL breaks.
        claim.execute("UPDATE tasks SET priority = priority WHERE false")
        claim.commit()
        thread.join(timeout=60)
    assert outcome == {"applied": [14]}
