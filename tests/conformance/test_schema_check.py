"""A process that does not migrate (`Creep(url, auto_migrate=False)`, `creep server` with
CREEP_AUTO_MIGRATE=false) checks the schema version when it first uses the database and
refuses one it was not written for: older (run `creep migrate`) or migrated by a newer creep
(upgrade creep), the rule `creep migrate` and /health/ready already follow."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from creep import Creep, SchemaOutOfDate, SchemaTooNew, ValidationError
from creep.api.app import create_app
from creep.api.settings import Settings
from creep.storage import open_store
from creep.storage.common import load_migrations

ROOT = Path(__file__).resolve().parents[2]


def _head(db_url: str) -> int:
    return len(load_migrations("sqlite" if db_url.startswith("sqlite") else "postgres"))


def _sql(db_url: str, statement: str) -> list[tuple[object, ...]]:
    if db_url.startswith("sqlite"):
        conn = sqlite3.connect(db_url.removeprefix("sqlite:///"))
        try:
            rows = conn.execute(statement).fetchall()
            conn.commit()
            return rows
        finally:
            conn.close()
    import psycopg

    with psycopg.connect(db_url) as pg:
        cur = pg.execute(statement)
        return cur.fetchall() if cur.description else []


def _migrated_by_a_newer_creep(db_url: str) -> int:
    """Migrate, then record one migration more than this creep has: its version."""
    open_store(db_url, migrate=True).close()
    newer = _head(db_url) + 1
    _sql(db_url, f"INSERT INTO schema_migrations (version, name) VALUES ({newer}, 'future')"
         if not db_url.startswith("sqlite") else
         f"INSERT INTO schema_migrations (version, name, applied_at) VALUES ({newer}, 'future', 0)")
    return newer


def test_without_migrating_a_database_a_newer_creep_migrated_is_refused(db_url: str) -> None:
    newer = _migrated_by_a_newer_creep(db_url)
    app = Creep(db_url, auto_migrate=False)
    try:
        with pytest.raises(SchemaTooNew) as raised:
            app.submit(tenant_id="t1", task_type="X", currency="USD")
        assert raised.value.message == (
            f"the database's schema is version {newer}, newer than this creep knows "
            f"({_head(db_url)}): upgrade creep")
        with pytest.raises(SchemaTooNew):  # every call, not only the first
            app.list_tasks(tenant_id="t1")
    finally:
        app.close()
    assert _sql(db_url, "SELECT count(*) FROM tasks") == [(0,)]


def test_without_migrating_an_older_schema_asks_for_creep_migrate(db_url: str) -> None:
    head = _head(db_url)
    store = open_store(db_url)
    store.migrate(head - 1)
    store.close()
    app = Creep(db_url, auto_migrate=False)
    try:
        with pytest.raises(SchemaOutOfDate) as raised:
            app.submit(tenant_id="t1", task_type="X", currency="USD")
        assert not isinstance(raised.value, SchemaTooNew)
        assert raised.value.message == (
            f"the database's schema is version {head - 1}, older than this creep needs "
            f"({head}): run `creep migrate`")
    finally:
        app.close()


def test_without_migrating_an_unmigrated_database_asks_for_creep_migrate(db_url: str) -> None:
    app = Creep(db_url, auto_migrate=False)
    try:
        with pytest.raises(SchemaOutOfDate, match=r"no creep schema .*run `creep migrate`"):
            app.submit(tenant_id="t1", task_type="X", currency="USD")
        with pytest.raises(SchemaOutOfDate):  # a worker stops at once, it does not poll
            app.run_worker(burst=True, install_signals=False)
    finally:
        app.close()



def test_without_migrating_a_missing_sqlite_file_is_not_created(tmp_path: Path) -> None:
    """A mistyped path is refused without leaving an empty database file behind (a later
    `creep migrate` at the right path would otherwise be easy to miss for this one)."""
    path = tmp_path / "typo.db"
    app = Creep(f"sqlite:///{path}", auto_migrate=False)
    try:
        with pytest.raises(SchemaOutOfDate, match="run `creep migrate`"):
            app.submit(tenant_id="t1", task_type="X", currency="USD")
        with pytest.raises(SchemaOutOfDate):
            app.run_worker(burst=True, install_signals=False)
    finally:
        app.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == []

def test_without_migrating_a_current_schema_is_used(db_url: str) -> None:
    open_store(db_url, migrate=True).close()
    with Creep(db_url, auto_migrate=False) as app:
        task = app.submit(tenant_id="t1", task_type="X", currency="USD")
        assert app.get_task(task.task_id).task_id == task.task_id


def test_api_without_migrating_does_not_start_on_a_newer_schema(db_url: str) -> None:
    newer = _migrated_by_a_newer_creep(db_url)
    app = create_app(Settings(database_url=db_url, auto_migrate=False,
                              maintenance_interval_seconds=0))

    async def start() -> None:
        async with app.router.lifespan_context(app):
            pass

    with pytest.raises(SchemaTooNew, match=f"version {newer}"):
        asyncio.run(start())


def _creep(*args: str, env: dict[str, str], timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """Run the CLI; one still running after `timeout` is stopped with all it started
    (`creep up`'s children) and TimeoutExpired raised."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "creep.cli", *args], cwd=ROOT, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, env={**os.environ, **env}, start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.terminate()  # `creep up` stops the processes it started (their own sessions)
        try:
            proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
        raise
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])



def test_readiness_stays_ready_when_a_newer_creep_migrates_under_a_running_server(
    db_url: str,
) -> None:
    """A rolling deploy runs `creep migrate` first, then replaces the processes: until then
    the old servers go on serving, so their readiness must keep them in rotation (with the
    reason to upgrade). A schema older than the server's is still not ready."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from fastapi.testclient import TestClient

    open_store(db_url, migrate=True).close()
    app = create_app(Settings(database_url=db_url, auto_migrate=False,
                              maintenance_interval_seconds=0))
    with TestClient(app) as client:
        r = client.get("/health/ready")
        assert r.status_code == 200 and "warning" not in r.json(), r.text
        newer = _migrated_by_a_newer_creep(db_url)
        r = client.get("/health/ready")
        assert r.status_code == 200, r.text
        assert r.json() == {
            "status": "ready", "schema_version": newer,
            "warning": f"the database's schema is version {newer}, newer than this creep "
                       f"knows ({_head(db_url)}): upgrade creep"}
        _sql(db_url, f"DELETE FROM schema_migrations WHERE version >= {_head(db_url)}")
        r = client.get("/health/ready")
        assert r.status_code == 503 and "run `creep migrate`" in r.json()["detail"], r.text

@pytest.mark.parametrize("case", ["newer", "unmigrated"])
def test_creep_server_without_migrating_refuses_to_start_with_one_error_line(
    db_url: str, case: str
) -> None:
    expected = (f"version {_migrated_by_a_newer_creep(db_url)}, newer than this creep knows"
                if case == "newer" else "run `creep migrate`")
    try:
        done = _creep("server", "--database-url", db_url, "--port", str(_free_port()),
                      env={"CREEP_AUTO_MIGRATE": "false", "CREEP_LOG_JSON": "false"})
    except subprocess.TimeoutExpired:
        pytest.fail("creep server started on a schema it does not know")
    assert done.returncode == 2, done.stderr[-2000:]
    assert "Traceback" not in done.stderr, done.stderr[-2000:]
    assert done.stderr.startswith("error: "), done.stderr[-2000:]
    assert expected in done.stderr


# -- CREEP_AUTO_MIGRATE outside `creep server` ---------------------------------------------------


def test_creep_auto_migrate_false_is_the_default_of_a_creep_app(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CREEP_AUTO_MIGRATE", "false")
    with Creep(db_url) as app, pytest.raises(SchemaOutOfDate, match="run `creep migrate`"):
        app.submit(tenant_id="t1", task_type="X", currency="USD")
    with Creep(db_url, auto_migrate=True) as app:  # an explicit choice wins
        app.submit(tenant_id="t1", task_type="X", currency="USD")
    monkeypatch.setenv("CREEP_AUTO_MIGRATE", "sometimes")
    with Creep(db_url) as app, pytest.raises(ValidationError, match="CREEP_AUTO_MIGRATE"):
        app.submit(tenant_id="t1", task_type="X", currency="USD")


def test_creep_worker_with_creep_auto_migrate_false_stops_at_once(db_url: str) -> None:
    done = _creep("worker", "--app", "creep.up_worker:app", "--database-url", db_url, "--burst",
                  env={"CREEP_AUTO_MIGRATE": "false"})
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.startswith("error: "), done.stderr[-2000:]
    assert "run `creep migrate`" in done.stderr
    assert "Traceback" not in done.stderr
    assert open_store(db_url).schema_version() == 0  # it did not migrate


@pytest.mark.parametrize("command", ["scheduler", "up"])
def test_creep_scheduler_and_up_honour_creep_auto_migrate_false(
    tmp_path: Path, command: str
) -> None:
    url = f"sqlite:///{tmp_path}/creep.db"
    port = ["--port", str(_free_port()), "--key-file", str(tmp_path / "key")] if command == "up" else []
    try:
        done = _creep(command, "--database-url", url, *port,
                      env={"CREEP_AUTO_MIGRATE": "false"}, timeout=20)
    except subprocess.TimeoutExpired:
        pytest.fail(f"creep {command} migrated and started despite CREEP_AUTO_MIGRATE=false")
    assert done.returncode == 2, done.stderr[-2000:]
    assert "run `creep migrate`" in done.stderr, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
