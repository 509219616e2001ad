"""Edges of the schema and configuration: append-only tables against SQLite's REPLACE, a
database that cannot be opened, one migrated by a newer creep, out-of-range values, settings
errors that name the variable the user set."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from creep import Creep, ValidationError
from creep.storage import open_store
from creep.storage.common import load_migrations

ROOT = Path(__file__).resolve().parents[2]


def _creep(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "creep.cli", *args], cwd=ROOT, capture_output=True, text=True,
        timeout=timeout, env={**os.environ, **(env or {})},
    )


# -- append-only tables on SQLite: INSERT OR REPLACE ---------------------------------------------


def _replace_row(path: str, table: str, key: str, key_value: str, column: str) -> None:
    """Rewrite one column of one row the way SQLite's REPLACE conflict resolution allows."""
    conn = sqlite3.connect(path)
    try:
        cols = [r[1] for r in conn.execute(f"PRAGMA table_info({table})")]
        select = ", ".join("'tampered'" if c == column else c for c in cols)
        conn.execute(
            f"INSERT OR REPLACE INTO {table} ({', '.join(cols)}) "
            f"SELECT {select} FROM {table} WHERE {key} = ?", (key_value,),
        )
        conn.commit()
    finally:
        conn.close()


def test_sqlite_insert_or_replace_rewrites_an_append_only_ledger_entry(tmp_path: Path) -> None:
    path = str(tmp_path / "creep.db")
    app = Creep(f"sqlite:///{path}")
    task = app.submit(tenant_id="t1", task_type="X", currency="USD")
    entry = app.record_ledger_entry(
        tenant_id="t1", entry_type="COST", amount="1.50", currency="USD", task_id=task.task_id
    )
    app.close()
    # README: the ledger is append-only, "triggers refuse UPDATE/DELETE". REPLACE deletes the
    # conflicting row without firing the DELETE trigger (recursive_triggers is off).
    with pytest.raises(sqlite3.DatabaseError):
        _replace_row(path, "ledger_entries", "entry_id", entry.entry_id, "description")
    app = Creep(f"sqlite:///{path}")
    try:
        (after,) = app.ledger_entries(tenant_id="t1", task_id=task.task_id)
        assert after.description is None
    finally:
        app.close()


def test_sqlite_insert_or_replace_rewrites_an_append_only_asset_event(tmp_path: Path) -> None:
    path = str(tmp_path / "creep.db")
    app = Creep(f"sqlite:///{path}")
    asset = app.create_asset(
        tenant_id="t1", sku_category="RAW_NET", sku_code="ip.uk.1", max_concurrency=1,
        currency="USD",
    )
    event = app.report_asset_event(
        tenant_id="t1", asset_id=asset.asset_id, event_type="HTTP_PROBE_FAIL", http_status=403,
        message="Forbidden by target site",
    )
    app.close()
    with pytest.raises(sqlite3.DatabaseError):
        _replace_row(path, "asset_events", "event_id", event.event_id, "message")


def test_sqlite_insert_or_replace_rewrites_a_young_audit_event(tmp_path: Path) -> None:
    path = str(tmp_path / "creep.db")
    open_store(f"sqlite:///{path}", migrate=True).close()
    row_id = str(uuid.uuid4())
    now_ms = int(time.time() * 1000)
    conn = sqlite3.connect(path)
    conn.execute(
        "INSERT INTO audit_events (id, timestamp, action, resource_type, resource, resource_id, "
        "principal, principal_uid, data, created_at) VALUES (?, ?, 'created', 'task', 'task', "
        "'r1', 'admin', 'k1', '{}', ?)", (row_id, now_ms, now_ms * 1000),
    )
    conn.commit()
    with pytest.raises(sqlite3.DatabaseError):  # as an UPDATE or DELETE of it is refused
        conn.execute("UPDATE audit_events SET action = 'x' WHERE id = ?", (row_id,))
    conn.rollback()
    conn.close()
    # README (audit log): "The table refuses UPDATE, TRUNCATE and DELETE of rows younger than
    # 90 days (triggers, both backends)". A REPLACE rewrites the row anyway.
    with pytest.raises(sqlite3.DatabaseError):
        _replace_row(path, "audit_events", "id", row_id, "action")


# -- opening a SQLite database that cannot be opened ---------------------------------------------


@pytest.mark.parametrize("case", ["missing_directory", "not_a_database"])
def test_cli_sqlite_database_that_cannot_be_opened_is_a_traceback(
    tmp_path: Path, case: str
) -> None:
    if case == "missing_directory":
        url = f"sqlite:///{tmp_path}/no/such/dir/creep.db"
    else:
        junk = tmp_path / "creep.db"
        junk.write_text("this is not a SQLite database " * 10)
        url = f"sqlite:///{junk}"
    done = _creep("migrate", "--database-url", url)
    # As for an unsupported scheme or an unreachable PostgreSQL: one clear line, status 2.
    assert "Traceback" not in done.stderr, done.stderr[-600:]
    assert done.returncode == 2
    assert "error" in done.stderr


# -- configuration: CREEP_LOG_LEVEL ---------------------------------------------------------------


@pytest.mark.parametrize("command", ["worker", "scheduler"])
def test_invalid_creep_log_level_is_a_traceback_not_a_message_naming_it(
    tmp_path: Path, command: str
) -> None:
    args = ["--app", "no_such_module_xyz:app"] if command == "worker" else []
    done = _creep(
        command, *args, "--database-url", f"sqlite:///{tmp_path}/creep.db",
        env={"CREEP_LOG_LEVEL": "LOUD"}, timeout=30,
    )
    assert "Traceback" not in done.stderr, done.stderr[-600:]
    assert done.returncode == 2
    assert "CREEP_LOG_LEVEL" in done.stderr or "--log-level" in done.stderr


# -- a schema newer than this creep ---------------------------------------------------------------


def test_database_migrated_by_a_newer_creep_is_accepted_as_up_to_date(db_url: str) -> None:
    dialect = "sqlite" if db_url.startswith("sqlite") else "postgres"
    head = len(load_migrations(dialect))
    store = open_store(db_url, migrate=True)
    store.close()
    if dialect == "sqlite":
        conn = sqlite3.connect(db_url.removeprefix("sqlite:///"))
        conn.execute(
            "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, 'future', 0)",
            (head + 1,),
        )
        conn.commit()
        conn.close()
    else:
        import psycopg

        with psycopg.connect(db_url) as pg:
            pg.execute(
                "INSERT INTO schema_migrations (version, name) VALUES (%s, 'future')", (head + 1,)
            )
    # Seed 002 (migrations): only supported schema versions are loaded. This creep knows
    # versions 1..head; a database a newer creep migrated must be refused, not reported as
    # "up to date" and then written with the older code.
    done = _creep("migrate", "--database-url", db_url)
    assert done.returncode != 0, done.stdout


# -- AssetEvent.latency_ms (seed 001: integer >= 0) -----------------------------------------------


def test_asset_event_latency_beyond_64_bits_is_not_a_validation_error(db_url: str) -> None:
    app = Creep(db_url)
    try:
        asset = app.create_asset(
            tenant_id="t1", sku_category="RAW_NET", sku_code="ip.uk.1", max_concurrency=1,
            currency="USD",
        )
        # SQLite: a raw OverflowError; PostgreSQL: a StorageError (bigint out of range).
        with pytest.raises(ValidationError) as raised:
            app.report_asset_event(
                tenant_id="t1", asset_id=asset.asset_id, event_type="PROBE", latency_ms=2**63
            )
        assert "latency_ms" in str(raised.value)
    finally:
        app.close()


# -- Limits (README: `Limits(max_payload_bytes=…)`) -----------------------------------------------


def test_limits_documented_for_the_payload_size_is_not_exported_by_creep() -> None:
    import creep

    assert hasattr(creep, "Limits"), "README tells users to pass Limits(max_payload_bytes=...)"


# -- configuration: CREEP_ARTIFACT_MAX_BYTES ------------------------------------------------------


@pytest.mark.parametrize("value", ["abc", "0"])
def test_invalid_creep_artifact_max_bytes_message_does_not_name_the_variable(
    tmp_path: Path, value: str
) -> None:
    done = _creep(
        "artifacts", "reconcile", "--database-url", f"sqlite:///{tmp_path}/creep.db",
        "--artifact-dir", str(tmp_path / "blobs"),
        env={"CREEP_ARTIFACT_MAX_BYTES": value},
    )
    assert done.returncode == 2
    # Today: "error: artifact_max_bytes: must be an integer" — a name the user never set.
    assert "CREEP_ARTIFACT_MAX_BYTES" in done.stderr, done.stderr
