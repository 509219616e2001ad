"""`creep ledger list|record|summary` and `creep export ledger` over the REST API."""

from __future__ import annotations

import csv
import io
from enum import StrEnum
from typing import Annotated, Any

import typer

from creep.cli_http.admin import Format, FormatOpt, Output, export_app, write_records
from creep.cli_http.common import (
    ApiKey,
    ApiUrl,
    Json,
    api_errors,
    client,
    err,
    out,
    parse_time,
    print_json,
    table,
    take,
    usage_error,
)
from creep.client import LedgerEntry

ledger_app = typer.Typer(help="The ledger (cost, revenue, margin) over the REST API.",
                         no_args_is_help=True)

From = Annotated[str | None, typer.Option("--from", help="occurred_at >= this (ISO 8601; UTC "
                                                         "unless an offset is given)")]
To = Annotated[str | None, typer.Option("--to", help="occurred_at < this (ISO 8601)")]
Tenant = Annotated[str | None, typer.Option(help="tenant_id")]
Project = Annotated[str | None, typer.Option(help="project_id")]
TaskId = Annotated[str | None, typer.Option("--task", help="task_id")]


def _filters(tenant: str | None, project: str | None, task: str | None, since: str | None,
             until: str | None) -> dict[str, Any]:
    return {"tenant_id": tenant, "project_id": project, "task_id": task,
            "from_": parse_time(since, "--from"), "to": parse_time(until, "--to")}


def _entry_row(e: LedgerEntry) -> tuple[Any, ...]:
    return (e.occurred_at, e.entry_type, f"{e.amount} {e.currency}", e.tenant_id, e.project_id,
            e.task_id, e.asset_id, e.description)


@ledger_app.command("list")
@api_errors
def ledger_list(
    entry_type: Annotated[str | None, typer.Option(
        "--type", help="COST, REVENUE, REFUND, TASK_BURN, ADJUSTMENT")] = None,
    tenant: Tenant = None, project: Project = None, task: TaskId = None,
    since: From = None, until: To = None,
    limit: Annotated[int, typer.Option(min=1, help="Rows at most (pages are followed).")] = 100,
    api_url: ApiUrl = None, api_key: ApiKey = None, json: Json = False,
) -> None:
    """Ledger entries by occurred_at."""
    filters = {**_filters(tenant, project, task, since, until), "entry_type": entry_type}
    with client(api_url, api_key) as c:
        entries = take(c.iter_ledger(page_size=min(limit, 1000), **filters), limit)
    if json:
        print_json(entries)
    else:
        table(f"{len(entries)} ledger entries", ("at", "type", "amount", "tenant", "project",
                                                 "task", "asset", "description"),
              (_entry_row(e) for e in entries))


class EntryType(StrEnum):
    REVENUE = "REVENUE"
    REFUND = "REFUND"
    ADJUSTMENT = "ADJUSTMENT"


@ledger_app.command("record")
@api_errors
def ledger_record(
    entry_type: Annotated[EntryType, typer.Option("--type", help="REVENUE, REFUND or "
                                                  "ADJUSTMENT (a signed correction of cost)")],
    amount: Annotated[str, typer.Option(help="a decimal, e.g. 12.50")],
    currency: Annotated[str, typer.Option(help="e.g. USD")],
    tenant: Tenant = None, project: Project = None, task: TaskId = None,
    asset: Annotated[str | None, typer.Option(help="asset_id")] = None,
    lease: Annotated[str | None, typer.Option(help="lease_id")] = None,
    description: Annotated[str | None, typer.Option()] = None,
    occurred_at: Annotated[str | None, typer.Option(help="ISO 8601 (default: now)")] = None,
    entry_id: Annotated[str | None, typer.Option(
        help="a UUID of yours: the same command run again records nothing more (it shows "
             "the entry written the first time)")] = None,
    api_url: ApiUrl = None, api_key: ApiKey = None, json: Json = False,
) -> None:
    """Append an entry (entries are never changed: correct a mistake with another one)."""
    fields = {"tenant_id": tenant, "project_id": project, "task_id": task, "asset_id": asset,
              "lease_id": lease, "description": description,
              "occurred_at": parse_time(occurred_at, "--occurred-at"), "entry_id": entry_id}
    with client(api_url, api_key) as c:
        entry = c.record_entry(entry_type.value, amount, currency,
                               **{k: v for k, v in fields.items() if v is not None})
    if json:
        print_json(entry)
    else:
        out.print(f"recorded {entry.entry_type} {entry.amount} {entry.currency}: "
                  f"{entry.entry_id}", highlight=False)


GROUPS = ("tenant_id", "project_id", "task_id", "currency")


@ledger_app.command("summary")
@api_errors
def ledger_summary(
    group_by: Annotated[list[str] | None, typer.Option(
        "--group-by", help="tenant_id, project_id, task_id (repeatable or comma-separated); "
                           "currency is always a group")] = None,
    tenant: Tenant = None, project: Project = None, task: TaskId = None,
    since: From = None, until: To = None,
    api_url: ApiUrl = None, api_key: ApiKey = None, json: Json = False,
) -> None:
    """Cost, revenue and margin (revenue - cost) per group."""
    groups = [g.strip() for raw in group_by or [] for g in raw.split(",") if g.strip()]
    bad = [g for g in groups if g not in GROUPS]
    if bad:
        usage_error(f"--group-by: {', '.join(bad)} not among {', '.join(GROUPS)}")
    filters = _filters(tenant, project, task, since, until)
    with client(api_url, api_key) as c:
        summary = c.ledger_summary(groups or "currency", **filters)
    if json:
        print_json(summary)
        return
    columns = summary.group_by
    table(f"ledger by {', '.join(columns)}", (*columns, "cost", "revenue", "margin", "entries"),
          ((*(g.raw.get(col) for col in columns), g.cost, g.revenue, g.margin, g.entries)
           for g in summary.items))


@export_app.command("ledger")
@api_errors
def export_ledger(
    output: Output, fmt: FormatOpt = Format.csv,
    entry_type: Annotated[str | None, typer.Option("--type")] = None,
    tenant: Tenant = None, project: Project = None, task: TaskId = None,
    since: From = None, until: To = None,
    api_url: ApiUrl = None, api_key: ApiKey = None,
) -> None:
    """Ledger entries (CSV is the server's own CSV export)."""
    filters = {**_filters(tenant, project, task, since, until), "entry_type": entry_type}
    with client(api_url, api_key) as c:
        if fmt is Format.csv:
            data = c.ledger_csv(**filters)
            try:
                output.write_bytes(data)
            except OSError as exc:
                usage_error(f"cannot write {str(output)!r}: {exc.strerror}")
            count = max(0, sum(1 for _ in csv.reader(io.StringIO(data.decode()))) - 1)
        else:
            count = write_records(output, fmt, None, (e.raw for e in c.iter_ledger(**filters)))
    err.print(f"wrote {count} ledger entries to {output}", highlight=False)
