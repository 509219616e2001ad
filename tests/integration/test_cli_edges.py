"""`creep` as a user runs it: a mistyped option value is one `error:` line naming the option
and a non-zero status, never a Python traceback."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _creep(*args: str, env: dict[str, str] | None = None,
           cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "creep.cli", *args], cwd=cwd, capture_output=True, text=True,
        timeout=60, env={**os.environ, **(env or {})},
    )


@pytest.mark.parametrize(
    ("app", "says"),
    [
        ("", "'' is not MODULE:ATTRIBUTE"),
        (":app", "':app' is not MODULE:ATTRIBUTE"),
        (".tasks:app", "'.tasks:app' is not MODULE:ATTRIBUTE"),
        # It said "'creep.examples:no_such_app' is not a creep.Creep instance".
        ("creep.examples:no_such_app", "module 'creep.examples' has no attribute 'no_such_app'"),
    ],
)
def test_worker_app_that_is_not_a_module_path_is_a_clear_error(
    tmp_path: Path, app: str, says: str
) -> None:
    done = _creep("worker", "--app", app, "--burst", "--database-url",
                  f"sqlite:///{tmp_path}/creep.db")
    assert "Traceback" not in done.stderr and "─" not in done.stderr, done.stderr[-800:]
    assert done.returncode == 2
    assert done.stderr.startswith(f"error: --app: {says}"), done.stderr


# -- creep migrate against a PostgreSQL it cannot use ---------------------------------------------


def _pg_url(database: str) -> str:
    from urllib.parse import urlsplit, urlunsplit

    from tests.conftest import PG_URL, require_postgres

    require_postgres()
    return urlunsplit(urlsplit(PG_URL)._replace(path=f"/{database}"))


def test_migrate_against_a_missing_postgres_database_names_it_at_once() -> None:
    url = _pg_url("creep_no_such_database")
    started = time.monotonic()
    done = _creep("migrate", "--database-url", url, env={"COLUMNS": "300"})
    # It waited 15 s, logged each attempt ("error connecting in 'creep': ...") and then said
    # only "pool initialization incomplete after 15 sec".
    assert time.monotonic() - started < 10
    assert done.returncode == 2
    [line] = done.stderr.splitlines()
    assert line.startswith(f"error: cannot connect to PostgreSQL at {url}: "), line
    assert 'database "creep_no_such_database" does not exist' in line


def test_unreachable_postgres_error_gives_the_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    from creep.domain.errors import StorageError
    from creep.storage import open_store, postgres_store

    # It waits (15 s) for a server that may be starting; not here.
    monkeypatch.setattr(postgres_store, "_CONNECT_WAIT_S", 0.2, raising=False)
    with pytest.raises(StorageError) as raised:
        open_store("postgresql://127.0.0.1:1/creep?connect_timeout=1")
    assert "Connection refused" in str(raised.value), raised.value


# -- one message, one line ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "starts"),
    [
        (("migrate", "--database-url", "mysql://" + "x" * 120 + "/creep"),
         "error: database_url: unsupported scheme in 'mysql://xxx"),
        (("task", "list", "--api-url", "ftp://" + "x" * 250),
         "error: the API URL must start with http:// or https://"),
    ],
)
def test_an_error_is_one_line_when_stderr_is_a_pipe(args: tuple[str, ...], starts: str) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    done = subprocess.run(
        [sys.executable, "-m", "creep.cli", *args], cwd=ROOT, capture_output=True, text=True,
        timeout=60, env=env,
    )
    assert done.returncode == 2
    # It was cut at 80 columns (creep migrate) or 200 (the HTTP commands): a `grep error:`
    # in a deploy log saw half the message.
    [line] = done.stderr.splitlines()
    assert line.startswith(starts), line
