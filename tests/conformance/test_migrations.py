"""One schema under versioned migrations: a database migrated step by step equals a fresh one."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from creep.storage import open_store
from creep.storage.common import load_migrations

ROOT = Path(__file__).resolve().parents[2]


def _schema(url: str) -> Any:
    if url.startswith("sqlite"):
        import sqlite3

        conn = sqlite3.connect(url.removeprefix("sqlite:///"))
        rows = conn.execute(
            "SELECT type, name, tbl_name, sql FROM sqlite_master "
            "WHERE name NOT LIKE 'sqlite_%' ORDER BY type, name"
        ).fetchall()
        conn.close()
        return rows
    import psycopg

    with psycopg.connect(url) as conn:
        schema = conn.execute("SELECT current_schema()").fetchone()
        assert schema is not None
        name = schema[0]
        columns = conn.execute(
            "SELECT table_name, column_name, data_type, is_nullable, column_default "
            "FROM information_schema.columns WHERE table_schema = %s "
            "ORDER BY table_name, column_name", (name,)
        ).fetchall()
        indexes = conn.execute(
            "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = %s "
            "ORDER BY indexname", (name,)
        ).fetchall()
        constraints = conn.execute(
            "SELECT conname, pg_get_constraintdef(c.oid) FROM pg_constraint c "
            "JOIN pg_namespace n ON n.oid = c.connamespace WHERE n.nspname = %s "
            "ORDER BY conname", (name,)
        ).fetchall()
        triggers = conn.execute(
            "SELECT tgname, pg_get_triggerdef(t.oid) FROM pg_trigger t "
            "JOIN pg_class c ON c.oid = t.tgrelid JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = %s AND NOT t.tgisinternal ORDER BY tgname", (name,)
        ).fetchall()
    def local(rows: list[tuple[Any, Any]]) -> list[tuple[Any, Any]]:
        return [(n, d.replace(name + ".", "")) for n, d in rows]

    return [columns, local(indexes), constraints, local(triggers)]


@pytest.fixture
def second_url(db_url: str, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if db_url.startswith("sqlite"):
        return f"sqlite:///{tmp_path}/fresh.db"
    make = request.getfixturevalue("pg_schemas")
    url: str = make()
    return url


def test_stepwise_migration_equals_fresh(db_url: str, second_url: str) -> None:
    head = len(load_migrations("sqlite" if db_url.startswith("sqlite") else "postgres"))
    assert head >= 2
    stepwise = open_store(db_url)
    for version in range(1, head + 1):
        assert stepwise.migrate(target=version) == [version]
    assert stepwise.migrate() == []
    assert stepwise.schema_version() == head
    stepwise.close()

    fresh = open_store(second_url)
    assert fresh.migrate() == list(range(1, head + 1))
    fresh.close()
    assert _schema(db_url) == _schema(second_url)


def test_creep_migrate_command(db_url: str) -> None:
    env = {**os.environ, "CREEP_DATABASE_URL": db_url}
    first = subprocess.run(
        [sys.executable, "-m", "creep.cli", "migrate"], env=env, cwd=ROOT,
        capture_output=True, text=True, timeout=120,
    )
    assert first.returncode == 0, first.stderr
    head = len(load_migrations("sqlite" if db_url.startswith("sqlite") else "postgres"))
    assert f"applied migrations {list(range(1, head + 1))}" in first.stdout
    again = subprocess.run(
        [sys.executable, "-m", "creep.cli", "migrate"], env=env, cwd=ROOT,
        capture_output=True, text=True, timeout=120,
    )
    assert again.returncode == 0 and "up to date" in again.stdout


def test_bad_database_url_is_a_clear_error() -> None:
    bad = subprocess.run(
        [sys.executable, "-m", "creep.cli", "migrate", "--database-url", "mysql://x/y"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )
    assert bad.returncode == 2
    assert "database_url: unsupported scheme" in bad.stderr


def _tamper_before_last_lock_migration(url: str) -> int:
    """Migrate to just before the lock-expiry migration (sqlite 0018, postgres 0019), write a
    lock that migration rewrites (its expiry not after its acquisition) and an object that
    makes the migration fail on its last statements, after it has rewritten the lock: it
    fails half-way. Returns the version it stops at."""
    if url.startswith("sqlite"):
        import sqlite3

        before = 17
        store = open_store(url)
        store.migrate(target=before)
        store.close()
        conn = sqlite3.connect(url.removeprefix("sqlite:///"))
        # 0018 rebuilds task_locks, then creates task_locks_state on the new table.
        conn.execute("DROP INDEX task_locks_state")
        conn.execute("CREATE INDEX task_locks_state ON tasks (status)")
        conn.execute(
            "INSERT INTO task_locks (lock_key, holder_id, token, state, acquired_at, "
            "expires_at, created_at, updated_at) VALUES ('k', 'h', 't', 'active', 10, 5, 1, 1)"
        )
        conn.commit()
        conn.close()
        return before
    import psycopg

    before = 18
    store = open_store(url)
    store.migrate(target=before)
    store.close()
    with psycopg.connect(url) as conn:
        # 0019 rewrites such locks, then adds the constraint task_locks_expiry.
        conn.execute("ALTER TABLE task_locks ADD CONSTRAINT task_locks_expiry CHECK (true)")
        conn.execute(
            "INSERT INTO task_locks (lock_key, holder_id, token, state, acquired_at, "
            "expires_at, created_at, updated_at) VALUES ('k', 'h', 't', 'active', "
            "'2026-01-01T00:00:10Z', '2026-01-01T00:00:05Z', now(), now())"
        )
    return before


def _locks(url: str) -> list[tuple[Any, ...]]:
    query = "SELECT lock_key, state, acquired_at, expires_at FROM task_locks"
    if url.startswith("sqlite"):
        import sqlite3

        conn = sqlite3.connect(url.removeprefix("sqlite:///"))
        rows = conn.execute(query).fetchall()
        conn.close()
        return rows
    import psycopg

    with psycopg.connect(url) as pg:
        return pg.execute(query).fetchall()


def test_migration_failing_half_way_leaves_the_database_as_it_was(db_url: str) -> None:
    before = _tamper_before_last_lock_migration(db_url)
    schema, locks = _schema(db_url), _locks(db_url)
    # `creep migrate`: one error line naming the migration, status 2, no traceback.
    done = subprocess.run(
        [sys.executable, "-m", "creep.cli", "migrate", "--database-url", db_url], cwd=ROOT,
        capture_output=True, text=True, timeout=120, env={**os.environ, "COLUMNS": "300"},
    )
    assert "Traceback" not in done.stderr, done.stderr[-800:]
    assert done.returncode == 2
    [line] = done.stderr.splitlines()
    assert line.startswith(f"error: migration {before + 1:04d}_lock_expiry failed: "), line
    assert f"nothing was applied (the schema is still at version {before})" in line
    # Nothing of it stayed: not the rewritten lock, not a table built on the way.
    assert _schema(db_url) == schema
    assert _locks(db_url) == locks
    store = open_store(db_url)
    try:
        assert store.schema_version() == before
    finally:
        store.close()


def test_target_above_the_newest_migration_is_refused(db_url: str) -> None:
    head = len(load_migrations("sqlite" if db_url.startswith("sqlite") else "postgres"))
    # It applied every migration, exit 0: "applied migrations [1, ..., head]; schema version
    # head" for --target head+1, which a deploy script takes as the version it asked for.
    done = subprocess.run(
        [sys.executable, "-m", "creep.cli", "migrate", "--database-url", db_url,
         "--target", str(head + 1)],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 2, done.stdout
    assert done.stderr.startswith(
        f"error: target: is above the newest migration this creep has ({head})"), done.stderr
    store = open_store(db_url)
    try:
        assert store.schema_version() == 0  # nothing applied
        assert store.migrate(target=head) == list(range(1, head + 1))
    finally:
        store.close()
