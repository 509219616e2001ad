"""Shared fixtures: every conformance test runs on SQLite and on PostgreSQL.

PostgreSQL comes from CREEP_TEST_POSTGRES_URL (default postgresql://127.0.0.1:5432/test).
Each test gets a schema of its own. With CI=true an unreachable PostgreSQL fails the run;
elsewhere the PostgreSQL variants are skipped with the reason.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

#: The repository root (the test apps live under tests/apps).
ROOT = Path(__file__).resolve().parents[1]
PG_URL = os.environ.get("CREEP_TEST_POSTGRES_URL", "postgresql://127.0.0.1:5432/test")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

_pg_problem: str | None = None
_pg_checked = False


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """`-n auto` (the default addopts): CREEP_TEST_WORKERS if set, else one process per core
    plus one, at most 4. Most tests wait on a subprocess, a server or a clock rather than the
    CPU; past 4, the multi-process tests' PostgreSQL pools near the server's default 100
    connections."""
    wanted = os.environ.get("CREEP_TEST_WORKERS")
    if wanted:
        return max(1, int(wanted))
    return min(4, (os.cpu_count() or 1) + 1)


def postgres_problem() -> str | None:
    """None when PostgreSQL is reachable, else why not."""
    global _pg_checked, _pg_problem
    if not _pg_checked:
        _pg_checked = True
        try:
            import psycopg

            with psycopg.connect(PG_URL, connect_timeout=3) as conn:
                conn.execute("SELECT 1")
        except Exception as exc:
            _pg_problem = f"PostgreSQL at {PG_URL} is not reachable ({exc.__class__.__name__}: {exc})"
    return _pg_problem


def require_postgres() -> None:
    problem = postgres_problem()
    if problem is None:
        return
    if IN_CI:
        pytest.fail(f"CI=true but {problem}", pytrace=False)
    pytest.skip(f"{problem}; set CREEP_TEST_POSTGRES_URL to run the PostgreSQL variants")


def _with_search_path(url: str, schema: str) -> str:
    sep = "&" if "?" in url else "?"
    return f"{url}{sep}options={quote(f'-csearch_path={schema}')}"


@pytest.fixture
def pg_schemas() -> Iterator[Callable[[], str]]:
    """Make PostgreSQL schemas for this test (each a URL); all dropped afterwards."""
    require_postgres()
    import psycopg

    made: list[str] = []

    def make() -> str:
        schema = f"creep_t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(PG_URL, autocommit=True) as conn:
            conn.execute(f'CREATE SCHEMA "{schema}"')
        made.append(schema)
        return _with_search_path(PG_URL, schema)

    yield make
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        try:
            for schema in made:
                assert_task_queue_in_step(conn, schema)
        finally:
            for schema in made:
                conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


_QUEUE_COLUMNS = (
    "task_id, status, tenant_id, task_type, priority, created_at, run_after, has_hints, "
    "deadline_at"
)


def assert_task_queue_in_step(conn: object, schema: str) -> None:
    """PostgreSQL's task_queue (migration 0010) holds exactly the PENDING/QUEUED/RUNNING
    tasks, column for column. One statement, one snapshot: it holds even while something is
    still writing, since the triggers change both tables in the same transaction. Checked
    after every PostgreSQL test, so every path the suite exercises is covered."""
    import psycopg

    assert isinstance(conn, psycopg.Connection)
    if conn.execute("SELECT to_regclass(%s)", (f'"{schema}".task_queue',)).fetchone() == (None,):
        return
    active = (
        f'SELECT {_QUEUE_COLUMNS} FROM "{schema}".tasks '
        "WHERE status IN ('PENDING', 'QUEUED', 'RUNNING')"
    )
    queue = f'SELECT {_QUEUE_COLUMNS} FROM "{schema}".task_queue'
    diff = conn.execute(
        f"({active} EXCEPT ALL {queue}) UNION ALL ({queue} EXCEPT ALL {active}) LIMIT 5"
    ).fetchall()
    assert diff == [], f"task_queue out of step with tasks in {schema}: {diff}"
    # The NO_RESOURCE instant (migration 0014), which the sweep trusts for the rows it reads.
    if conn.execute(
        "SELECT 1 FROM information_schema.columns WHERE table_schema = %s "
        "AND table_name = 'task_queue' AND column_name = 'no_resource_at'", (schema,)
    ).fetchone():
        # From queued_at until migration 0015, from GREATEST(queued_at, run_after) since.
        since = conn.execute(
            f'SELECT 1 FROM "{schema}".schema_migrations WHERE version = 15').fetchone()
        start = "GREATEST(t.queued_at, t.run_after)" if since else "t.queued_at"
        stale = conn.execute(
            f'SELECT t.task_id, t.status, q.no_resource_at FROM "{schema}".task_queue q '
            f'JOIN "{schema}".tasks t USING (task_id) WHERE q.no_resource_at IS DISTINCT FROM '
            f"(CASE WHEN t.status = 'QUEUED' AND t.has_hints "
            f"THEN {start} + t.timeout_ms * interval '1 millisecond' END) LIMIT 5"
        ).fetchall()
        assert stale == [], f"task_queue.no_resource_at out of step in {schema}: {stale}"


@pytest.fixture
def pg_schema_url(pg_schemas: Callable[[], str]) -> str:
    return pg_schemas()


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest, tmp_path: object) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/creep.db"
    url: str = request.getfixturevalue("pg_schema_url")
    return url


def child_pythonpath(*first: str) -> str:
    """PYTHONPATH for a creep process a test starts: `first`, the repository root (the test
    apps), then whatever PYTHONPATH this run has (a developer's `PYTHONPATH=src` must reach
    the children too, or they would run another installed copy of creep)."""
    inherited = os.environ.get("PYTHONPATH")
    return os.pathsep.join(p for p in (*first, str(ROOT), inherited) if p)


def wait_until(predicate: Callable[[], object], timeout: float) -> bool:
    """Poll `predicate` every 10 ms until it is true or `timeout` seconds passed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return bool(predicate())


def blocked_by(conn: Any, holder_pid: int) -> bool:
    """Some PostgreSQL backend waits on a lock the backend `holder_pid` holds (`conn`: a
    psycopg connection to the same server)."""
    row = conn.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE %s = ANY(pg_blocking_pids(pid))",
        (holder_pid,),
    ).fetchone()
    return bool(row and row[0])
