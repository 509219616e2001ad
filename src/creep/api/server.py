"""`creep server`: validate settings, then serve the app with uvicorn."""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, Any

from creep.api.settings import Settings, SettingsError, load_settings

if TYPE_CHECKING:
    import uvicorn


def app_from_env() -> Any:
    """uvicorn factory for worker processes (settings travel through the environment)."""
    from creep.api.app import create_app
    from creep.api.context import configure_logging

    settings = load_settings()
    configure_logging(settings.log_level, settings.log_json)
    _tune_threads()
    return create_app(settings, settle_heap=True)


def _tune_threads() -> None:
    # The task writer thread (create_batcher.py) releases the GIL on every SQLite/psycopg call
    # and must win it back from the busy event loop; at the default 5 ms switch interval each
    # batch waits several intervals. 0.5 ms measured ~25 % more POST /v1/tasks throughput.
    sys.setswitchinterval(0.0005)


def serve(settings: Settings) -> None:
    import uvicorn

    from creep.api.app import create_app
    from creep.api.context import configure_logging

    configure_logging(settings.log_level, settings.log_json)
    _tune_threads()
    common: dict[str, Any] = {
        "host": settings.host, "port": settings.port, "log_config": None,
        "access_log": False, "timeout_graceful_shutdown": 10, "lifespan": "on",
        "proxy_headers": False,
    }
    if settings.workers > 1:
        # Each process builds its app from the environment; hand the flags over that way.
        for name in Settings.__slots__:
            value = getattr(settings, name)
            if value is not None:
                os.environ[f"CREEP_{name.upper()}"] = str(value)
        _supervise(uvicorn.Config("creep.api.server:app_from_env", factory=True,
                                  workers=settings.workers, **common))
    else:
        uvicorn.run(create_app(settings, settle_heap=True), **common)


def _supervise(config: uvicorn.Config) -> None:
    """uvicorn.run's multi-process branch, with the exit status it drops: a process that
    fails to start (the app's start-up raised) stops the supervisor, which returns normally,
    so `creep server --workers N` exited 0. Exit STARTUP_FAILURE (3), as one process does."""
    from uvicorn.config import STARTUP_FAILURE
    from uvicorn.supervisors import Multiprocess

    supervisor = Multiprocess(config, sockets=[config.bind_socket()])
    supervisor.run()
    if any(p.exitcode == STARTUP_FAILURE for p in supervisor.processes):
        raise SystemExit(STARTUP_FAILURE)


def prepare_database(settings: Settings) -> None:
    """Migrate (auto_migrate) or check the schema before serving, so a database the server
    cannot use is one `error:` line and exit 2, not a traceback from every uvicorn process."""
    from creep.domain.errors import CreepError
    from creep.storage import open_store, require_current_schema

    try:
        store = open_store(settings.database_url)
        try:
            if settings.auto_migrate:
                store.migrate()
            else:
                require_current_schema(store)
        finally:
            store.close()
    except CreepError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def check(**flags: Any) -> Settings:
    """Settings or exit 2 with one line per problem on stderr."""
    try:
        return load_settings(**{k: v for k, v in flags.items() if v is not None})
    except SettingsError as exc:
        for line in exc.problems:
            print(f"error: {line}", file=sys.stderr)
        raise SystemExit(2) from None
