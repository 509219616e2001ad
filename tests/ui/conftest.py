"""Dashboard tests: a real `creep server` process and a real Chromium (Debian's
/usr/bin/chromium) driven by Playwright. Without Chromium they skip, except with CI=true,
where they fail (as the PostgreSQL variants do)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.api.conftest import Server, start_server, stop_server
from tests.conftest import IN_CI

CHROMIUM = os.environ.get("CREEP_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
TIMEOUT_MS = 20_000  # the machine may be busy: generous waits, still bounded


def chromium_problem() -> str | None:
    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        return f"no Chromium at {CHROMIUM} (apt-get install -y chromium)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright package is not installed (pip install -e '.[dev]')"
    return None


def require_chromium() -> None:
    problem = chromium_problem()
    if problem is None:
        return
    if IN_CI:
        pytest.fail(f"CI=true but {problem}", pytrace=False)
    pytest.skip(f"{problem}; the dashboard's browser tests need it")


# Module scope: playwright's sync API keeps an asyncio loop running on this thread while it is
# open, which would break every later test that calls asyncio.run().
@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    require_chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=shutil.which(CHROMIUM) or CHROMIUM,
                               args=CHROMIUM_ARGS, headless=True)
        yield b
        b.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    """A fresh browser context (its own sessionStorage) whose page fails the test on any
    JavaScript error or Content-Security-Policy violation."""
    context = browser.new_context(viewport={"width": 1360, "height": 900})
    context.set_default_timeout(TIMEOUT_MS)
    pg = context.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda exc: errors.append(f"page error: {exc}"))
    pg.on("console", lambda msg: errors.append(f"console: {msg.text}")
          if msg.type == "error" and "Failed to load resource" not in msg.text else None)
    pg.on("dialog", lambda dialog: dialog.accept())  # the Cancel / Ban confirmations
    yield pg
    context.close()
    assert not errors, errors


@pytest.fixture(scope="session")
def ui_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One SQLite-backed server for the dashboard tests (each test makes its own tenants)."""
    require_chromium()
    base = tmp_path_factory.mktemp("ui")
    srv = start_server(f"sqlite:///{base}/creep.db", base / "server.log")
    yield srv
    stop_server(srv)


def sign_in(page: Any, server: Server, key: str, route: str = "") -> None:
    page.goto(f"{server.url}/ui/#/{route}")
    page.fill("#api-key", key)
    page.click("#sign-in button[type=submit]")
    page.wait_for_selector("#sign-out")


def screenshot_dir() -> Path:
    return Path(os.environ.get("CREEP_TEST_SCREENSHOTS", "/tmp/creep-ui-screenshots"))


def create_task(c: Any, **fields: Any) -> dict[str, Any]:
    """POST /v1/tasks (a RENDER task unless `fields` say otherwise); the created task."""
    body = {"task_type": "RENDER", "input_payload": {"n": 1}, **fields}
    r = c.post("/v1/tasks", json=body)
    assert r.status_code == 201, r.text
    data: dict[str, Any] = r.json()
    return data
