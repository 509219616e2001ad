"""`creep` as a user runs it: a mistyped option value is one `error:` line naming the option
and a non-zero status, never a Python traceback."""

from __future__ import annotations

import os
import subprocess
import sys
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
