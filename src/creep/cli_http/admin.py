"""`creep tenants|keys|audit|export ...` over the REST API (admin keys)."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer

from creep.cli_http.common import (
    ApiKey,
    ApiUrl,
    Json,
    api_errors,
    cell,
    client,
    err,
    out,
    print_json,
    show,
    table,
    take,
    usage_error,
)
from creep.client import Client, Tenant

tenants_app = typer.Typer(help="Tenants over the REST API (admin keys).", no_args_is_help=True)
audit_app = typer.Typer(help="The audit log over the REST API (admin keys).",
                        no_args_is_help=True)
export_app = typer.Typer(help="Export records to a CSV or JSON file.", no_args_is_help=True)


def _tenant_row(t: Tenant) -> tuple[Any, ...]:
    return (t.tenant_id, t.name, t.rate_limit_per_second, t.rate_limit_burst,
            t.max_active_tasks, t.created_at)


@tenants_app.command("create")
@api_errors
def tenants_create(
    tenant_id: str,
    name: Annotated[str | None, typer.Option()] = None,
    rate_limit: Annotated[float | None, typer.Option(help="requests per second (0: none)")] = None,
    burst: Annotated[int | None, typer.Option(help="rate limit burst")] = None,
    max_active_tasks: Annotated[int | None, typer.Option(
        help="cap on unfinished tasks (PENDING+QUEUED+RUNNING; 0: none)")] = None,
    api_url: ApiUrl = None, api_key: ApiKey = None, json: Json = False,
) -> None:
    """Create a tenant."""
    with client(api_url, api_key) as c:
        tenant = c.create_tenant(tenant_id, name=name, rate_limit_per_second=rate_limit,
                                 rate_limit_burst=burst, max_active_tasks=max_active_tasks)
    if json:
        print_json(tenant)
    else:
        out.print(f"created tenant {tenant.tenant_id}")


class Limit(StrEnum):
    rate_limit = "rate-limit"
    burst = "burst"
    max_active_tasks = "max-active-tasks"


_LIMIT_FIELDS = {Limit.rate_limit: "rate_limit_per_second", Limit.burst: "rate_limit_burst",
                 Limit.max_active_tasks: "max_active_tasks"}


@tenants_app.command("update")
@api_errors
def tenants_update(
    tenant_id: str,
    name: Annotated[str | None, typer.Option()] = None,
    rate_limit: Annotated[float | None, typer.Option(help="requests per second (0: none)")] = None,
    burst: Annotated[int | None, typer.Option(help="rate limit burst")] = None,
    max_active_tasks: Annotated[int | None, typer.Option(
        help="cap on unfinished tasks (PENDING+QUEUED+RUNNING; 0: none)")] = None,
    default: Annotated[list[Limit] | None, typer.Option(
        "--default", help="this limit is the server's default again (repeatable)")] = None,
    api_url: ApiUrl = None, api_key: ApiKey = None, json: Json = False,
) -> None:
    """Change a tenant's name or limits (the options given; the rest stay). Servers apply a
    change within 5 s."""
    changes: dict[str, Any] = {
        field: value for field, value in (
            ("name", name), ("rate_limit_per_second", rate_limit),
            ("rate_limit_burst", burst), ("max_active_tasks", max_active_tasks))
        if value is not None}
    for limit in default or ():
        field = _LIMIT_FIELDS[limit]
        if field in changes:
            usage_error(f"--default {limit.value} and a value for it: give one")
        changes[field] = None
    if not changes:
        usage_error("nothing to change: give --name, a limit or --default LIMIT")
    with client(api_url, api_key) as c:
        tenant = c.update_tenant(tenant_id, **changes)
    if json:
        print_json(tenant)
    else:
        out.print(f"updated tenant {tenant.tenant_id}")


@tenants_app.command("list")
@api_errors
def tenants_list(api_url: ApiUrl = None, api_key: ApiKey = None, json: Json = False) -> None:
    """Every tenant."""
    with client(api_url, api_key) as c:
        tenants = list(c.iter_tenants())
    if json:
        print_json(tenants)
    else:
        table(f"{len(tenants)} tenants",
              ("tenant_id", "name", "rate/s", "burst", "max active", "created"),
              (_tenant_row(t) for t in tenants))


@tenants_app.command("show")
@api_errors
def tenants_show(tenant_id: str, api_url: ApiUrl = None, api_key: ApiKey = None,
                 json: Json = False) -> None:
    """One tenant."""
    with client(api_url, api_key) as c:
        tenant = c.get_tenant(tenant_id)
    show(tenant, json, f"tenant {tenant.tenant_id}")


# `creep keys create` (creep.api.cli_commands) writes to the database directly, to bootstrap;
# these two go through the API like every other resource command.
def keys_issue(
    name: Annotated[str, typer.Option(help="A name for the key (shown in the audit log).")],
    tenant: Annotated[str | None, typer.Option(help="The tenant of a tenant key.")] = None,
    admin: Annotated[bool, typer.Option("--admin", help="An admin key (all tenants).")] = False,
    read_only: Annotated[bool, typer.Option("--read-only")] = False,
    api_url: ApiUrl = None, api_key: ApiKey = None, json: Json = False,
) -> None:
    """Create an API key over the API; prints the key once (stdout), details on stderr."""
    if admin == (tenant is not None):
        usage_error("give exactly one of --admin or --tenant TENANT")
    with client(api_url, api_key) as c:
        key = c.create_key(name, tenant_id=tenant, admin=admin, read_only=read_only)
    if json:
        print_json(key)
        return
    err.print(f"key_id: {key.key_id} (the key is shown once; store it now)", highlight=False)
    print(key.key)


def keys_revoke(key_id: str, api_url: ApiUrl = None, api_key: ApiKey = None,
                json: Json = False) -> None:
    """Revoke an API key (it stops working within the server's key cache time)."""
    with client(api_url, api_key) as c:
        key = c.revoke_key(key_id)
    if json:
        print_json(key)
    else:
        out.print(f"revoked {key.key_id} ({key.name})")


AUDIT_COLUMNS = ("seq", "at", "action", "resource", "tenant", "by", "request_id")


def _audit_filters(resource_type: str | None, action: str | None, tenant: str | None,
                   resource_id: str | None) -> dict[str, Any]:
    return {"resource_type": resource_type, "action": action, "tenant_id": tenant,
            "resource_id": resource_id}


@audit_app.command("list")
@api_errors
def audit_list(
    resource_type: Annotated[str | None, typer.Option(help="task, batch, tenant, apiKey, ...")] = None,
    action: Annotated[str | None, typer.Option(help="created, cancelled, retried, ...")] = None,
    tenant: Annotated[str | None, typer.Option()] = None,
    resource_id: Annotated[str | None, typer.Option()] = None,
    limit: Annotated[int, typer.Option(min=1)] = 50,
    api_url: ApiUrl = None, api_key: ApiKey = None, json: Json = False,
) -> None:
    """Audit events, newest first."""
    filters = _audit_filters(resource_type, action, tenant, resource_id)
    with client(api_url, api_key) as c:
        events = take(c.iter_audit(page_size=min(limit, 1000), **filters), limit)
    if json:
        print_json(events)
    else:
        table(f"{len(events)} audit events", AUDIT_COLUMNS, (
            (a.seq, a.created_at, a.action, f"{a.resource_type} {a.resource.get('identifier', '')}",
             a.tenant_id, a.user.get("username") or a.user.get("uid"), a.request_id)
            for a in events))


class Format(StrEnum):
    csv = "csv"
    json = "json"


FormatOpt = Annotated[Format, typer.Option("--format", help="csv or json")]
Output = Annotated[Path, typer.Option("--output", "-o", help="The file to write.")]

EVENT_COLUMNS = ("event_id", "cursor", "task_id", "tenant_id", "event_type", "from_status",
                 "to_status", "attempt", "payload", "created_at")


def write_records(path: Path, fmt: Format, columns: tuple[str, ...] | None,
           rows: Iterator[dict[str, Any]]) -> int:
    """Stream rows to the file (JSON: one array); returns how many were written."""
    count = 0
    try:
        with path.open("w", encoding="utf-8", newline="") as f:
            if fmt is Format.json:
                f.write("[")
                for row in rows:
                    f.write(("," if count else "") + "\n" + orjson.dumps(row).decode())
                    count += 1
                f.write("\n]\n")
                return count
            writer: Any = None
            for row in rows:
                if writer is None:
                    writer = csv.DictWriter(f, fieldnames=list(columns or row), extrasaction="ignore")
                    writer.writeheader()
                writer.writerow({k: cell(v) for k, v in row.items()})
                count += 1
            if writer is None and columns:
                csv.writer(f).writerow(columns)
    except OSError as exc:
        usage_error(f"cannot write {str(path)!r}: {exc.strerror}")
    return count


def _events_of(c: Client, task_id: str | None, filters: dict[str, Any]) -> Iterator[dict[str, Any]]:
    task_ids = [task_id] if task_id else (t.task_id for t in c.iter_tasks(**filters))
    for tid in task_ids:
        for event in c.iter_task_events(tid):
            yield event.raw


@export_app.command("events")
@api_errors
def export_events(
    output: Output, fmt: FormatOpt = Format.csv,
    task: Annotated[str | None, typer.Option(help="Only this task's events.")] = None,
    tenant: Annotated[str | None, typer.Option()] = None,
    status: Annotated[str | None, typer.Option()] = None,
    task_type: Annotated[str | None, typer.Option("--type")] = None,
    batch: Annotated[str | None, typer.Option()] = None,
    api_url: ApiUrl = None, api_key: ApiKey = None,
) -> None:
    """Task events (of one task, or of every task matching the filters)."""
    filters = {"tenant_id": tenant, "status": status, "task_type": task_type, "batch_id": batch}
    with client(api_url, api_key) as c:
        count = write_records(output, fmt, EVENT_COLUMNS, _events_of(c, task, filters))
    err.print(f"wrote {count} events to {output}", highlight=False)


@export_app.command("audit")
@api_errors
def export_audit(
    output: Output, fmt: FormatOpt = Format.csv,
    resource_type: Annotated[str | None, typer.Option()] = None,
    action: Annotated[str | None, typer.Option()] = None,
    tenant: Annotated[str | None, typer.Option()] = None,
    resource_id: Annotated[str | None, typer.Option()] = None,
    api_url: ApiUrl = None, api_key: ApiKey = None,
) -> None:
    """The audit log (CSV is the server's own CSV export, streamed)."""
    filters = _audit_filters(resource_type, action, tenant, resource_id)
    with client(api_url, api_key) as c:
        if fmt is Format.csv:
            data = c.audit_csv(**filters)
            try:
                output.write_bytes(data)
            except OSError as exc:
                usage_error(f"cannot write {str(output)!r}: {exc.strerror}")
            count = max(0, sum(1 for _ in csv.reader(io.StringIO(data.decode()))) - 1)
        else:
            count = write_records(output, fmt, None, (a.raw for a in c.iter_audit(**filters)))
    err.print(f"wrote {count} audit events to {output}", highlight=False)
