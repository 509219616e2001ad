"""Worker settings that make no sense are refused up front, naming the setting, from the
Python API and from `creep worker`'s flags, instead of a busy loop or a crash mid-claim."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from creep import Creep, ValidationError


@pytest.fixture
def app(tmp_path: Path) -> Iterator[Creep]:
    creep_app = Creep(f"sqlite:///{tmp_path}/settings.db")

    @creep_app.handler("T")
    def t(ctx: object) -> int:
        return 1

    yield creep_app
    creep_app.close()


@pytest.mark.parametrize(("setting", "value"), [
    ("maintenance_interval", 0), ("maintenance_interval", -1.0),
    ("maintenance_interval", math.nan), ("maintenance_interval", math.inf),
    ("concurrency", -3), ("concurrency", math.nan), ("concurrency", "4"), ("concurrency", True),
    ("batch_size", 2.5),
    ("shutdown_grace", -1), ("shutdown_grace", math.nan),
    ("claim_ttl", 0.001), ("claim_ttl", 0.5), ("claim_ttl", math.nan), ("claim_ttl", math.inf),
    ("poll_interval", math.nan), ("poll_interval", math.inf), ("flush_interval", -1),
    ("timeout_grace", math.nan), ("timeout_grace", -5), ("heartbeat_interval", math.inf),
    ("gc_threshold", 1.5), ("maintenance", "no"), ("backoff", 3),
])
def test_a_worker_setting_that_makes_no_sense_is_refused_naming_it(
    app: Creep, setting: str, value: Any
) -> None:
    with pytest.raises(ValidationError) as raised:
        app.worker(**{setting: value})
    assert [field for field, _ in raised.value.errors] == [setting]


def test_sensible_edge_settings_are_accepted(app: Creep) -> None:
    app.submit(task_type="T")
    stats = app.run_worker(burst=True, install_signals=False, claim_ttl=1, shutdown_grace=0,
                           maintenance_interval=0.05, flush_interval=0, timeout_grace=0)
    assert stats["completed"] == 1


_CLI_APP = textwrap.dedent('''
    from creep import Creep

    app = Creep()

    @app.handler("T")
    def t(ctx):
        return 1
''')


@pytest.mark.parametrize(("flag", "value", "setting"), [
    ("--claim-ttl", "inf", "claim_ttl"), ("--claim-ttl", "0.5", "claim_ttl"),
    ("--shutdown-grace", "inf", "shutdown_grace"),
])
def test_the_worker_cli_refuses_a_setting_that_makes_no_sense(
    tmp_path: Path, flag: str, value: str, setting: str
) -> None:
    (tmp_path / "settings_app.py").write_text(_CLI_APP)
    env = dict(os.environ, CREEP_DATABASE_URL=f"sqlite:///{tmp_path}/cli.db")
    done = subprocess.run(
        [sys.executable, "-m", "creep.cli", "worker", "--app", "settings_app:app", "--burst",
         flag, value], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60,
    )
    out = done.stdout + done.stderr
    assert done.returncode != 0, out
    assert setting in out or flag in out, out
