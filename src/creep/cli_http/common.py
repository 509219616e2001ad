"""What every HTTP resource command shares: connection options, output, exit codes.

Exit codes (documented in the README; scripts may rely on them):
  0  success
  1  the API answered with a problem (not found, conflict, auth, rate limit, 5xx) or the
     server could not be reached
  2  usage or validation: bad flags or input files, or the API rejected the input (422)
  3  `--wait` ended but not every task succeeded
"""

from __future__ import annotations

import functools
import itertools
import sys
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from typing import Annotated, Any, NoReturn, ParamSpec, TypeVar

import orjson
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from creep.client import ApiProblem, Client, ClientError
from creep.client.models import Model
from creep.domain.text import loads_exact

EXIT_OK, EXIT_API, EXIT_USAGE, EXIT_UNFINISHED = 0, 1, 2, 3



def plain_console(*, stderr: bool = False, width: int | None = None) -> Console:
    """A console that prints text exactly as given: Rich markup and `:emoji:` codes are off.
    What the CLI prints is data (stored text, user input, the server's messages); with markup
    on, `[bold]` in a description would vanish and `[/x]` would crash the command. What goes
    to stderr (an `error:` line, a note) is not wrapped at the console's width: one message,
    one line, also for a script or log reading it through a pipe (80 columns)."""
    return Console(stderr=stderr, width=width, markup=False, emoji=False, soft_wrap=stderr)


# Piped output is not cut to 80 columns (ids stay on one line).
out = plain_console(width=None if sys.stdout.isatty() else 200)
err = plain_console(stderr=True, width=None if sys.stderr.isatty() else 200)

ApiUrl = Annotated[
    str | None,
    typer.Option("--api-url", envvar="CREEP_API_URL", show_envvar=True,
                 help="Base URL of a creep server [default: http://127.0.0.1:8000]"),
]
ApiKey = Annotated[
    str | None,
    typer.Option("--api-key", envvar="CREEP_API_KEY", show_envvar=True,
                 help="API key (Bearer)"),
]
Json = Annotated[bool, typer.Option("--json", help="Print JSON (for scripts) instead of a table.")]

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")


def error_line(message: str) -> Text:
    """`error: MESSAGE` with the prefix in red; the message (which may quote user input or the
    server's words) is plain text, never markup."""
    return Text.assemble(("error:", "red"), " ", message)


def usage_error(message: str) -> NoReturn:
    err.print(error_line(message))
    raise typer.Exit(EXIT_USAGE)


def report_problem(exc: ApiProblem) -> int:
    err.print(error_line(f"{exc.status} {exc.title}: {exc.detail}"))
    for e in exc.errors:
        err.print(f"  {e.get('field', '?')}: {e.get('rule', '')}", highlight=False)
    if exc.retry_after is not None:
        err.print(f"  retry after {exc.retry_after:g} s", highlight=False)
    if exc.request_id:
        err.print(f"  request id: {exc.request_id}", highlight=False)
    return EXIT_USAGE if exc.status == 422 else EXIT_API


def api_errors(fn: Callable[P, R]) -> Callable[P, R]:
    """Turn client errors into one clear message on stderr and the documented exit code."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except ApiProblem as exc:
            raise typer.Exit(report_problem(exc)) from None
        except ClientError as exc:
            err.print(error_line(str(exc)))
            raise typer.Exit(EXIT_API) from None

    return wrapper


def client(url: str | None, key: str | None) -> Client:
    try:
        return Client(url, key)
    except ClientError as exc:  # a malformed --api-url is a usage error
        usage_error(str(exc))


def _plain(value: Any) -> Any:
    if isinstance(value, Model):
        return value.raw
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def print_json(value: Any) -> None:
    sys.stdout.write(orjson.dumps(_plain(value), option=orjson.OPT_INDENT_2).decode() + "\n")
    sys.stdout.flush()


def cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(value, dict | list):
        return orjson.dumps(value).decode()
    return str(value)


def table(title: str | None, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    t = Table(title=title)
    for column in columns:
        t.add_column(column, overflow="fold")
    for row in rows:
        t.add_row(*(cell(v) for v in row))
    out.print(t)


def details(model: Model, title: str) -> None:
    """One object as a two-column table (every field of its JSON)."""
    table(title, ("field", "value"), model.raw.items())


def show(model: Model, json: bool, title: str) -> None:
    """One object: its JSON with --json, else every field as a table."""
    if json:
        print_json(model)
    else:
        details(model, title)


def parse_json_object(raw: str, name: str) -> dict[str, Any]:
    """A JSON object given inline or as @FILE (e.g. extra fields of a request body)."""
    value = parse_json_arg(raw, name)
    if not isinstance(value, dict):
        usage_error(f"{name}: must be a JSON object")
    return value


def parse_json_arg(raw: str, name: str) -> Any:
    """A JSON value given inline or as @FILE."""
    text = raw
    if raw.startswith("@"):
        try:
            with open(raw[1:], encoding="utf-8") as f:
                text = f.read()
        except OSError as exc:
            usage_error(f"{name}: cannot read {raw[1:]!r}: {exc.strerror}")
    try:
        return loads_exact(text)
    except ValueError as exc:  # orjson.JSONDecodeError included
        usage_error(f"{name}: not valid JSON ({exc})")


def parse_time(raw: str | None, name: str) -> datetime | None:
    """An ISO 8601 date or timestamp flag; without an offset it is UTC."""
    if raw is None:
        return None
    try:
        value = datetime.fromisoformat(raw)
    except ValueError:
        usage_error(f"{name}: not an ISO 8601 date or time (e.g. 2026-01-31 or "
                    f"2026-01-31T12:00:00+01:00): {raw!r}")
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def take(items: Iterable[T], limit: int) -> list[T]:
    """The first `limit` items (pages are fetched only as far as needed)."""
    return list(itertools.islice(items, limit))


def progress() -> Progress:
    """A progress bar on stderr (stdout stays clean for --json)."""
    return Progress(TextColumn("{task.description}", markup=False), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), console=err, transient=False)
