"""The `creep` command."""

from __future__ import annotations

import importlib
import logging
import os
import sys
from typing import Annotated

import typer
from rich.table import Table

from creep.cli_http.common import error_line, plain_console
from creep.domain.errors import CreepError
from creep.domain.lock import MAX_LOCK_TTL, MIN_LOCK_TTL

app = typer.Typer(
    name="creep", help="creep: a durable task control plane.", no_args_is_help=True,
    add_completion=False,
)
console = plain_console()  # prints data: no Rich markup
err = plain_console(stderr=True)

DatabaseUrl = Annotated[
    str | None,
    typer.Option(
        "--database-url", envvar="CREEP_DATABASE_URL",
        help="sqlite:///PATH (default sqlite:///./creep.db) or postgresql://USER@HOST:PORT/DB",
    ),
]


def _fail(message: str, code: int = 2) -> typer.Exit:
    err.print(error_line(message))
    return typer.Exit(code)


def _logging(level: str) -> None:
    from creep.api.settings import LOG_LEVELS

    if level.upper() not in LOG_LEVELS:
        raise _fail(f"--log-level (CREEP_LOG_LEVEL): must be one of {', '.join(LOG_LEVELS)}")
    logging.basicConfig(
        level=level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )


@app.command()
def migrate(
    database_url: DatabaseUrl = None,
    target: Annotated[int | None, typer.Option(help="Stop at this schema version.")] = None,
) -> None:
    """Bring the database schema up to date (safe to run from several machines at once)."""
    from creep.storage import open_store

    try:
        store = open_store(database_url)
        applied = store.migrate(target)
        version = store.schema_version()
        store.close()
    except CreepError as exc:
        raise _fail(str(exc)) from None
    if applied:
        # One line however long the list (rich wraps at 80 columns when piped).
        console.print(f"applied migrations {applied}; schema version {version}", soft_wrap=True)
    else:
        console.print(f"schema is up to date (version {version})")


@app.command()
def worker(
    app_path: Annotated[
        str, typer.Option("--app", help="MODULE:ATTRIBUTE of a creep.Creep with handlers")
    ],
    database_url: DatabaseUrl = None,
    concurrency: Annotated[int, typer.Option(min=1, help="Tasks in flight at once.")] = 10,
    burst: Annotated[bool, typer.Option(help="Exit once nothing is runnable.")] = False,
    shutdown_grace: Annotated[
        float, typer.Option(min=0, help="Seconds to let tasks finish on SIGTERM/SIGINT.")
    ] = 30.0,
    claim_ttl: Annotated[float, typer.Option(min=1, help="Seconds a claim lives.")] = 30.0,
    claim_lanes: Annotated[int, typer.Option(
        min=1, max=2, help="PostgreSQL, with --concurrency 64 or more: 2 runs each claim as "
        "two concurrent transactions, each preferring its half of the asset pool (README, "
        "Workers).")] = 1,
    log_level: Annotated[str, typer.Option(envvar="CREEP_LOG_LEVEL")] = "INFO",
    api_url: Annotated[
        str | None,
        typer.Option(envvar="CREEP_API_URL",
                     help="Work through a creep server's HTTP worker protocol, not the database."),
    ] = None,
    api_key: Annotated[
        str | None, typer.Option(envvar="CREEP_API_KEY", help="API key for --api-url.")
    ] = None,
) -> None:
    """Run a worker process for the handlers registered on --app."""
    from creep.app import Creep

    _logging(log_level)
    sys.path.insert(0, os.getcwd())
    module_name, _, attr = app_path.partition(":")
    if not all(part.isidentifier() for part in module_name.split(".")):
        # importlib would raise ValueError ('') or TypeError ('.relative'): a traceback.
        raise _fail(f"--app: {app_path!r} is not MODULE:ATTRIBUTE (e.g. myproject.tasks:app)")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise _fail(f"--app: cannot import {module_name!r}: {exc}") from None
    attr = attr or "app"
    if not hasattr(module, attr):
        raise _fail(f"--app: module {module_name!r} has no attribute {attr!r}")
    creep_app = getattr(module, attr)
    if not isinstance(creep_app, Creep):
        raise _fail(f"--app: {app_path!r} is not a creep.Creep instance")
    if database_url:
        creep_app.database_url = database_url
    if api_url:  # the HTTP worker protocol (creep.remote)
        from creep.remote.run import run_remote_worker

        if not api_key:
            raise _fail("--api-key (or CREEP_API_KEY) is required with --api-url")
        if claim_lanes > 1:
            raise _fail("--claim-lanes works on the database, not with --api-url")
        try:
            stats = run_remote_worker(
                creep_app, api_url, api_key, burst=burst, concurrency=concurrency,
                shutdown_grace=shutdown_grace, claim_ttl=claim_ttl,
            )
        except CreepError as exc:  # a refused setting or key, a URL that is no creep API
            raise _fail(str(exc)) from None
        console.print(f"worker stopped: {stats}")
        _exit_past_sync_handlers()
        return
    try:
        stats = creep_app.run_worker(
            burst=burst, concurrency=concurrency, shutdown_grace=shutdown_grace,
            claim_ttl=claim_ttl, claim_lanes=claim_lanes,
        )
    except CreepError as exc:
        raise _fail(str(exc)) from None
    finally:
        creep_app.close()
    console.print(f"worker stopped: {stats}")
    _exit_past_sync_handlers()


def _exit_past_sync_handlers() -> None:
    """A sync handler still running after the shutdown grace was given back (requeued) and
    cannot be stopped; Python would wait for its thread at exit, keeping the process alive
    past the grace its supervisor allows. Exit now, as promised, without waiting for it."""
    import threading

    if any(t.name.startswith("creep-handler") and t.is_alive() for t in threading.enumerate()):
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


@app.command()
def demo(
    database_url: DatabaseUrl = None,
    tasks: Annotated[int, typer.Option(min=1, max=100_000)] = 20,
) -> None:
    """Run the built-in example end to end: submit tasks, work them off, show what happened."""
    from creep.examples import build_example_app, submit_examples

    example = build_example_app(database_url)
    try:
        submitted = submit_examples(example, tasks)
        console.print(f"submitted {len(submitted)} tasks to {example.database_url}")
        stats = example.run_worker(burst=True, concurrency=8, install_signals=False)
        table = Table(title="creep demo: what happened")
        for column in ("task", "type", "status", "result", "attempts", "events"):
            table.add_column(column)
        for task in submitted:
            current = example.get_task(task.task_id)
            events = " > ".join(e.event_type for e in example.task_events(task.task_id))
            table.add_row(
                current.task_id[:8], current.task_type, current.status.value,
                current.result_code or "", str(current.attempt), events,
            )
        console.print(table)
        console.print(f"worker: {stats}")
    except CreepError as exc:
        raise _fail(str(exc)) from None
    finally:
        example.close()


# -- schedules (issue 4) -----------------------------------------------------------------------


@app.command()
def scheduler(
    database_url: DatabaseUrl = None,
    tick: Annotated[float, typer.Option(min=0.05, help="Seconds between sweeps.")] = 1.0,
    lock_ttl: Annotated[
        float, typer.Option(min=MIN_LOCK_TTL, max=MAX_LOCK_TTL,
                            help="Seconds leadership lasts without renewal.")
    ] = 10.0,
    holder_id: Annotated[
        str | None, typer.Option(help="This process's name in the lock table.")
    ] = None,
    log_level: Annotated[str, typer.Option(envvar="CREEP_LOG_LEVEL")] = "INFO",
) -> None:
    """Run a scheduler: one process at a time (the lock holder) fires due schedule slots;
    run several for fail-over. SIGTERM/SIGINT: finish the sweep, release the lock, exit 0."""
    from creep.schedule_cli import run_scheduler_process

    _logging(log_level)
    try:
        run_scheduler_process(database_url, tick=tick, lock_ttl=lock_ttl, holder_id=holder_id)
    except CreepError as exc:
        raise _fail(str(exc)) from None

# -- creep artifacts (cli_artifacts.py) ---------------------------------------------------------
from creep.cli_artifacts import artifacts_app  # noqa: E402

app.add_typer(artifacts_app, name="artifacts")

# -- REST API (creep.api): `creep server`, `creep keys create` ----------------------------------
from creep.api.cli_commands import register_api_commands  # noqa: E402

register_api_commands(app)

# -- resource commands over HTTP (creep.cli_http) and `creep up` (creep.up) ---------------------
from creep.api.cli_commands import keys_app  # noqa: E402
from creep.cli_http import register_http_commands  # noqa: E402

register_http_commands(app, keys_app)
from creep.up import up  # noqa: E402

app.command("up")(up)


def main() -> None:
    from creep.up import stop_with_parent

    stop_with_parent()
    app()


if __name__ == "__main__":
    main()
