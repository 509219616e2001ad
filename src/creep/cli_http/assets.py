"""`creep asset ...` and `creep lease ...` over the REST API."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import orjson
import typer

from creep.cli_http.asset_file import AssetFile, FileProblem, Row, RowError, read_asset_file
from creep.cli_http.common import (
    EXIT_USAGE,
    ApiKey,
    ApiUrl,
    Json,
    api_errors,
    client,
    err,
    out,
    print_json,
    progress,
    show,
    table,
    take,
    usage_error,
)
from creep.client import ApiProblem, Asset, AssetEvent, Client, Lease

asset_app = typer.Typer(help="Pooled assets over the REST API.", no_args_is_help=True)
lease_app = typer.Typer(help="Leases of assets over the REST API.", no_args_is_help=True)

MAX_CHUNK = 1000  # the server's limit per request (each request is one transaction)


def _asset_row(a: Asset) -> tuple[Any, ...]:
    return (a.asset_id, a.tenant_id, a.sku_category, a.sku_code, a.status,
            f"{a.current_concurrency}/{a.max_concurrency}", a.health_score,
            f"{a.cost_per_lease} {a.currency}", a.cooldown_until, a.created_at)


ASSET_COLUMNS = ("asset_id", "tenant", "category", "code", "status", "in use", "health",
                 "cost/lease", "cooling until", "created")


# -- import -----------------------------------------------------------------------------------
def _send_chunk(c: Client, chunk: list[Row], partial: bool,
                errors: list[RowError]) -> list[Asset]:
    """One atomic request. With --partial, rows the server refuses (named `[i].field`: a
    422, or a 409 for an asset_id of another asset) are dropped and the rest sent again: a
    refused request wrote nothing."""
    while chunk:
        try:
            return c.create_assets([r.asset for r in chunk])
        except ApiProblem as exc:
            if exc.status != 422 and not (exc.status == 409 and exc.errors):
                raise
            refused = _refused_rows(exc, chunk)
            errors.extend(refused)
            named = {e.line for e in refused}
            if not partial or not named or None in named:
                raise _Stop from None
            chunk = [r for r in chunk if r.line not in named]
    return []


class _Stop(Exception):
    """The server refused rows and the import stops (errors are recorded)."""


def _refused_rows(exc: ApiProblem, chunk: list[Row]) -> list[RowError]:
    out_errors = []
    for e in exc.errors or [{"field": "", "rule": exc.detail}]:
        path = str(e.get("field", ""))
        line: int | None = None
        if path.startswith("[") and "]" in path:
            index, _, path = path[1:].partition("]")
            path = path.removeprefix(".")
            if index.isdigit() and int(index) < len(chunk):
                line = chunk[int(index)].line
        out_errors.append(RowError(line, path, str(e.get("rule", ""))))
    return out_errors


def _report(errors: list[RowError], path: Path) -> None:
    shown = errors[:200]
    err.print(f"{path}: {len(errors)} problem(s):\n  " + "\n  ".join(str(e) for e in shown),
              highlight=False, markup=False)
    if len(errors) > len(shown):
        err.print(f"  ... and {len(errors) - len(shown)} more", highlight=False)


@asset_app.command("import")
@api_errors
def asset_import(
    file: Annotated[Path, typer.Argument(help="FILE.csv or FILE.jsonl (one asset per row)")],
    tenant: Annotated[str | None, typer.Option(help="tenant_id of rows that name none")] = None,
    partial: Annotated[bool, typer.Option(
        "--partial", help="Import the good rows and report the bad ones (exit 2 if any).")] = False,
    chunk_size: Annotated[int, typer.Option(min=1, max=MAX_CHUNK,
                                            help="Assets per request.")] = MAX_CHUNK,
    api_url: ApiUrl = None, api_key: ApiKey = None, json: Json = False,
) -> None:
    """Import assets. Every row is checked first; any bad row (reported with its line
    number) and nothing is imported, unless --partial. Each request of --chunk-size rows is
    one transaction."""
    try:
        parsed: AssetFile = read_asset_file(file, tenant)
    except FileProblem as exc:
        usage_error(str(exc))
    errors = list(parsed.errors)
    if errors and not partial:
        _report(errors, file)
        err.print("nothing imported (--partial imports the good rows)", highlight=False)
        raise typer.Exit(EXIT_USAGE)
    rows = parsed.rows
    chunks = [rows[i:i + chunk_size] for i in range(0, len(rows), chunk_size)]
    imported: list[Asset] = []
    stopped_at: int | None = None  # the first line of the request the server refused
    with client(api_url, api_key) as c, progress() as bar:
        job = bar.add_task("importing", total=len(rows))
        for chunk in chunks:
            try:
                imported += _send_chunk(c, chunk, partial, errors)
            except _Stop:
                if not partial:
                    stopped_at = chunk[0].line
                    break
            except ApiProblem:
                if imported:  # earlier requests are committed: say so, then fail
                    err.print(f"imported before the failure: {len(imported)} assets (the rows "
                              f"before line {chunk[0].line})", highlight=False)
                raise
            bar.advance(job, len(chunk))
    if errors:
        _report(sorted(errors, key=lambda e: e.line or 0), file)
    if stopped_at is not None:
        err.print(f"imported before the failure: {len(imported)} assets (the rows before line "
                  f"{stopped_at})" if imported else "nothing imported", highlight=False)
    if json:
        print_json({"imported": imported, "errors": [e.json() for e in errors]})
    else:
        out.print(f"imported {len(imported)} assets"
                  + (f"; {len({e.line for e in errors})} row(s) refused" if errors else ""),
                  highlight=False)
    if errors:
        raise typer.Exit(EXIT_USAGE)


# -- read and change --------------------------------------------------------------------------
@asset_app.command("list")
@api_errors
def asset_list(
    status: Annotated[str | None, typer.Option(help="NEW, READY, IN_USE, COOLING, BANNED, "
                                                    "SOLD, ARCHIVED")] = None,
    category: Annotated[str | None, typer.Option(help="sku_category")] = None,
    code: Annotated[str | None, typer.Option(help="sku_code: exact, or prefix.*")] = None,
    project: Annotated[str | None, typer.Option(help="project_id")] = None,
    tenant: Annotated[str | None, typer.Option()] = None,
    limit: Annotated[int, typer.Option(min=1, help="Rows at most (pages are followed).")] = 100,
    api_url: ApiUrl = None, api_key: ApiKey = None, json: Json = False,
) -> None:
    """Assets (ordered by asset_id)."""
    filters = {"status": status, "sku_category": category, "sku_code": code,
               "project_id": project, "tenant_id": tenant}
    with client(api_url, api_key) as c:
        assets = take(c.iter_assets(page_size=min(limit, 1000), **filters), limit)
    if json:
        print_json(assets)
    else:
        table(f"{len(assets)} assets", ASSET_COLUMNS, (_asset_row(a) for a in assets))


@asset_app.command("show")
@api_errors
def asset_show(asset_id: str, api_url: ApiUrl = None, api_key: ApiKey = None,
               json: Json = False) -> None:
    """One asset, every field."""
    with client(api_url, api_key) as c:
        asset = c.get_asset(asset_id)
    show(asset, json, f"asset {asset.asset_id}")


Reason = Annotated[str | None, typer.Option(help="Why (kept in the asset's events and audit).")]


def _status_change(action: str, asset_id: str, reason: str | None, url: str | None,
                   key: str | None, json: bool) -> None:
    with client(url, key) as c:
        change = {"ban": c.ban_asset, "unban": c.unban_asset, "archive": c.archive_asset}[action]
        asset = change(asset_id, reason)
    if json:
        print_json(asset)
    else:
        out.print(f"{asset.asset_id}: {asset.status}", highlight=False)


@asset_app.command("ban")
@api_errors
def asset_ban(asset_id: str, reason: Reason = None, api_url: ApiUrl = None,
              api_key: ApiKey = None, json: Json = False) -> None:
    """BANNED: never leased; its active leases are revoked."""
    _status_change("ban", asset_id, reason, api_url, api_key, json)


@asset_app.command("unban")
@api_errors
def asset_unban(asset_id: str, reason: Reason = None, api_url: ApiUrl = None,
                api_key: ApiKey = None, json: Json = False) -> None:
    """BANNED -> READY."""
    _status_change("unban", asset_id, reason, api_url, api_key, json)


@asset_app.command("archive")
@api_errors
def asset_archive(asset_id: str, reason: Reason = None, api_url: ApiUrl = None,
                  api_key: ApiKey = None, json: Json = False) -> None:
    """ARCHIVED: retired for good; its active leases are revoked."""
    _status_change("archive", asset_id, reason, api_url, api_key, json)


def _set_value(raw: str) -> Any:
    """A --set value: JSON (a number, object, list, true/false, null) when it reads as such,
    else the text; a number with a fraction stays text, so money is never a float."""
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return raw
    return raw if isinstance(value, float) else value


def _parse_sets(sets: list[str]) -> dict[str, Any]:
    changes: dict[str, Any] = {}
    for item in sets:
        name, sep, raw = item.partition("=")
        if not sep or not name.strip():
            usage_error(f"--set {item!r}: give FIELD=VALUE")
        if name.strip() in changes:
            usage_error(f"--set: {name.strip()} given twice")
        changes[name.strip()] = _set_value(raw)
    return changes


def _update(asset_id: str, version: int | None, changes: dict[str, Any], url: str | None,
            key: str | None, json: bool) -> None:
    with client(url, key) as c:
        if version is None:
            # If-Match: a change made meanwhile by someone else is a 412, never overwritten.
            version = c.get_asset(asset_id).version
        asset = c.update_asset(asset_id, version, **changes)
    if json:
        print_json(asset)
    else:
        out.print(f"{asset.asset_id}: {asset.status} (version {asset.version})",
                  highlight=False)


@asset_app.command("update")
@api_errors
def asset_update(
    asset_id: str,
    sets: Annotated[list[str], typer.Option(
        "--set", help="FIELD=VALUE, repeatable: project_id, env, sku_code, attributes (a "
                      "JSON object), status, max_concurrency, health_score, cooldown_seconds, "
                      "cost_per_lease, currency; null clears project_id or env")],
    version: Annotated[int | None, typer.Option(
        min=1, help="The version read (else the current one is read first).")] = None,
    api_url: ApiUrl = None, api_key: ApiKey = None, json: Json = False,
) -> None:
    """Change an asset's fields (and status) if its version is still --version; any refused
    field and nothing changes."""
    _update(asset_id, version, _parse_sets(sets), api_url, api_key, json)


@asset_app.command("activate")
@api_errors
def asset_activate(asset_id: str, api_url: ApiUrl = None, api_key: ApiKey = None,
                   json: Json = False) -> None:
    """NEW -> READY: the asset may be leased."""
    _update(asset_id, None, {"status": "READY"}, api_url, api_key, json)


@asset_app.command("sell")
@api_errors
def asset_sell(asset_id: str, api_url: ApiUrl = None, api_key: ApiKey = None,
               json: Json = False) -> None:
    """SOLD: never leased again; its active leases are revoked."""
    _update(asset_id, None, {"status": "SOLD"}, api_url, api_key, json)


def _event_row(e: AssetEvent) -> tuple[Any, ...]:
    change = f"{e.old_status} -> {e.new_status}" if e.new_status else ""
    return (e.occurred_at, e.event_type, e.severity, change, e.error_code or e.message,
            e.task_id, e.event_id)


@asset_app.command("events")
@api_errors
def asset_events(
    asset_id: str,
    event_type: Annotated[str | None, typer.Option("--type", help="only this event_type")] = None,
    limit: Annotated[int, typer.Option(min=1, max=10_000)] = 1000,
    api_url: ApiUrl = None, api_key: ApiKey = None, json: Json = False,
) -> None:
    """An asset's events, oldest first."""
    with client(api_url, api_key) as c:
        events = c.asset_events(asset_id, event_type=event_type, limit=limit)
    if json:
        print_json(events)
    else:
        table(f"events of {asset_id}", ("at", "event", "severity", "status", "detail", "task",
                                        "event_id"), (_event_row(e) for e in events))


# -- leases -----------------------------------------------------------------------------------
def _lease_row(x: Lease) -> tuple[Any, ...]:
    return (x.lease_id, x.tenant_id, x.task_id, x.asset_id, x.status, f"{x.cost} {x.currency}",
            x.acquired_at, x.released_at)


@lease_app.command("list")
@api_errors
def lease_list(
    task: Annotated[str | None, typer.Option(help="task_id")] = None,
    asset: Annotated[str | None, typer.Option(help="asset_id")] = None,
    status: Annotated[str | None, typer.Option(help="ACTIVE, RELEASED, EXPIRED, REVOKED")] = None,
    tenant: Annotated[str | None, typer.Option()] = None,
    limit: Annotated[int, typer.Option(min=1, max=10_000)] = 100,
    api_url: ApiUrl = None, api_key: ApiKey = None, json: Json = False,
) -> None:
    """Leases by task, asset and status."""
    with client(api_url, api_key) as c:
        leases = c.list_leases(task_id=task, asset_id=asset, status=status, tenant_id=tenant,
                               limit=limit)
    if json:
        print_json(leases)
    else:
        table(f"{len(leases)} leases", ("lease_id", "tenant", "task", "asset", "status", "cost",
                                        "acquired", "released"), (_lease_row(x) for x in leases))


@lease_app.command("release")
@api_errors
def lease_release(lease_id: str, api_url: ApiUrl = None, api_key: ApiKey = None,
                  json: Json = False) -> None:
    """Release an ACTIVE lease by hand."""
    with client(api_url, api_key) as c:
        lease = c.release_lease(lease_id)
    if json:
        print_json(lease)
    else:
        out.print(f"{lease.lease_id}: {lease.status}", highlight=False)
