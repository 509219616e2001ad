"""The README quick start, literally: a fresh clone of this checkout's HEAD, a new virtualenv,
then the README's run command (`pip install . && creep up --demo`) in a shell, probed over
HTTP and stopped like Ctrl-C (SIGINT to its process group)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.api.conftest import free_port

ROOT = Path(__file__).resolve().parents[2]


def quick_start_commands() -> list[str]:
    """The ```bash blocks of the README's "Quick start" section, in order."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    return [block.strip() for block in re.findall(r"```bash\n(.*?)```", section, re.S)]


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_readme_quick_start_from_a_fresh_clone(tmp_path: Path) -> None:
    run_command = quick_start_commands()[0]
    assert "creep up" in run_command, run_command
    clone = tmp_path / "creep"
    subprocess.run(["git", "clone", "--quiet", str(ROOT), str(clone)], check=True, timeout=120)
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True,
                          text=True, check=True).stdout.strip()
    subprocess.run(["git", "checkout", "--quiet", head], cwd=clone, check=True)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CREEP_", "VIRTUAL_ENV"))}
    env.update(PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}",
               VIRTUAL_ENV=str(venv), CREEP_PORT=str(port), PIP_QUIET="1")
    proc = subprocess.Popen(["bash", "-c", run_command], cwd=clone, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    assert proc.stdout is not None
    key = None
    output: list[str] = []
    try:
        for line in proc.stdout:  # pip, then creep up's banner
            output.append(line)
            if line.startswith("admin key: "):
                key = line.split()[2]
                break
        assert key, "".join(output[-40:])
        assert (clone / "creep.db").exists() and (clone / "creep.db.admin-key").exists()
        deadline = time.monotonic() + 120
        while True:
            r = httpx.get(f"http://127.0.0.1:{port}/v1/tasks",
                          params={"tenant_id": "demo", "status": "SUCCESS"},
                          headers={"Authorization": f"Bearer {key}"})
            if r.status_code == 200 and r.json()["items"]:
                break
            assert time.monotonic() < deadline, r.text
            time.sleep(0.5)
        # The dashboard ships as package data of the (non-editable) install.
        for asset in ("ui/", "ui/js/app.js", "ui/js/pages/task.js", "ui/style.css"):
            assert httpx.get(f"http://127.0.0.1:{port}/{asset}").status_code == 200, asset
    except BaseException:
        os.killpg(proc.pid, signal.SIGKILL)
        raise
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
    rest, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, rest
