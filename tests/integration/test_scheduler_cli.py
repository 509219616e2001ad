"""`creep scheduler` as a process on the embedded database: leads, then exits 0 on SIGTERM
and releases its lock."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from creep.storage import open_store
from tests.conftest import child_pythonpath

ROOT = Path(__file__).resolve().parents[2]


def test_scheduler_cli_graceful_sigterm(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/creep.db"
    env = {**os.environ, "CREEP_DATABASE_URL": url, "PYTHONPATH": child_pythonpath()}
    proc = subprocess.Popen(
        [sys.executable, "-m", "creep.cli", "scheduler", "--tick", "0.1", "--holder-id", "cli"],
        env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    try:
        store = open_store(url)
        deadline = time.monotonic() + 60
        lock = None
        while time.monotonic() < deadline:
            try:
                lock = store.lock_get("creep.scheduler")  # type: ignore[attr-defined]
            except Exception:
                lock = None  # not migrated yet
            if lock is not None:
                break
            time.sleep(0.1)
        assert lock is not None and lock["holder_id"] == "cli" and lock["state"] == "active"
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
        assert proc.returncode == 0, out
        released = store.lock_get("creep.scheduler")  # type: ignore[attr-defined]
        assert released is not None and released["state"] == "released"
        store.close()
    finally:
        if proc.poll() is None:
            proc.kill()
