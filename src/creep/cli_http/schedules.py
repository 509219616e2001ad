"""`creep schedule ...` over the REST API (`creep scheduler` is the daemon that fires them)."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from creep.cli_http.common import (
    ApiKey,
    ApiUrl,
    Json,
    api_errors,
    client,
    out,
    parse_json_arg,
    parse_json_object,
    parse_time,
    print_json,
    show,
    table,
    take,
    usage_error,
)
from creep.client import Execution, Schedule

schedule_app = typer.Typer(
    help="Schedules (cron, interval, one-off) over the REST API; `creep scheduler` fires them.",
    no_args_is_help=True)

Uid = Annotated[str, typer.Argument(help="The schedule's uid (a tenant key may give its name).")]


def _timing(s: Schedule) -> str:
    if s.cron_expr:
        return f"cron {s.cron_expr}" + (f" ({s.timezone})" if s.timezone != "UTC" else "")
    if s.interval:
        return f"every {s.interval} s"
    return "once"


def _schedule_row(s: Schedule) -> tuple[Any, ...]:
    return (s.uid, s.tenant_id, s.name, s.type, _timing(s), "yes" if s.enabled else "no",
            s.next_run, f"{s.success_executions}/{s.total_executions}")


@schedule_app.command("add")
@api_errors
def schedule_add(
    name: Annotated[str, typer.Argument(help="Unique in the tenant.")],
    task_type: Annotated[str, typer.Option("--type", help="task_type of the task each firing "
                                                          "creates")],
    cron: Annotated[str | None, typer.Option(help="5 fields: minute hour day month weekday")] = None,
    every: Annotated[int | None, typer.Option(min=1, help="an interval in seconds")] = None,
    at: Annotated[str | None, typer.Option(help="one run at this ISO 8601 time (or the first "
                                                "run of --every)")] = None,
    tenant: Annotated[str | None, typer.Option(help="tenant_id (admin keys must give it)")] = None,
    payload: Annotated[str | None, typer.Option(
        help="data handed to each task (input_payload): JSON or @FILE")] = None,
    timezone: Annotated[str | None, typer.Option(help="IANA zone of --cron (default UTC)")] = None,
    priority: Annotated[int | None, typer.Option(min=0, max=100)] = None,
    description: Annotated[str | None, typer.Option()] = None,
    disabled: Annotated[bool, typer.Option("--disabled", help="Create it disabled.")] = False,
    spec: Annotated[str | None, typer.Option(
        help="more ScheduledTask fields: a JSON object or @FILE")] = None,
    api_url: ApiUrl = None, api_key: ApiKey = None, json: Json = False,
) -> None:
    """Create a schedule: --cron, --every or --at."""
    if sum(x is not None for x in (cron, every)) > 1 or (cron and at):
        usage_error("give one of --cron, --every (with an optional --at for the first run) "
                    "or --at alone")
    if cron is None and every is None and at is None and spec is None:
        usage_error("give --cron, --every or --at")
    body: dict[str, Any] = {}
    if spec is not None:
        body.update(parse_json_object(spec, "--spec"))
    fields = {"name": name, "type": task_type, "cron_expr": cron, "interval": every,
              "next_run": parse_time(at, "--at"), "tenant_id": tenant, "timezone": timezone,
              "priority": priority, "description": description,
              "enabled": False if disabled else None}
    body.update({k: v for k, v in fields.items() if v is not None})
    if payload is not None:
        body["data"] = parse_json_arg(payload, "--payload")
    with client(api_url, api_key) as c:
        sched = c.create_schedule(body)
    if json:
        print_json(sched)
    else:
        out.print(f"created schedule {sched.name} ({_timing(sched)}): {sched.uid}; "
                  f"next run {sched.next_run or '-'}", highlight=False)


@schedule_app.command("list")
@api_errors
def schedule_list(
    tenant: Annotated[str | None, typer.Option()] = None,
    task_type: Annotated[str | None, typer.Option("--type")] = None,
    enabled: Annotated[bool | None, typer.Option("--enabled/--disabled",
                                                 help="only enabled / disabled ones")] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000)] = 1000,
    api_url: ApiUrl = None, api_key: ApiKey = None, json: Json = False,
) -> None:
    """Schedules by tenant and name."""
    with client(api_url, api_key) as c:
        items = c.list_schedules(enabled=enabled, task_type=task_type, tenant_id=tenant,
                                 limit=limit)
    if json:
        print_json(items)
    else:
        table(f"{len(items)} schedules", ("uid", "tenant", "name", "type", "timing", "enabled",
                                          "next run", "ok/runs"),
              (_schedule_row(s) for s in items))


@schedule_app.command("show")
@api_errors
def schedule_show(uid: Uid, api_url: ApiUrl = None, api_key: ApiKey = None,
                  json: Json = False) -> None:
    """One schedule, every field."""
    with client(api_url, api_key) as c:
        sched = c.get_schedule(uid)
    show(sched, json, f"schedule {sched.name}")


def _set_enabled(uid: str, enabled: bool, url: str | None, key: str | None,
                 json: bool) -> None:
    with client(url, key) as c:
        current = c.get_schedule(uid)
        # If-Match: a change made meanwhile by someone else is a 412, never overwritten.
        sched = c.update_schedule(current.uid, current.version, enabled=enabled)
    if json:
        print_json(sched)
    else:
        out.print(f"{sched.name}: {'enabled' if sched.enabled else 'disabled'}; next run "
                  f"{sched.next_run or '-'}", highlight=False)


@schedule_app.command("enable")
@api_errors
def schedule_enable(uid: Uid, api_url: ApiUrl = None, api_key: ApiKey = None,
                    json: Json = False) -> None:
    """Enable a schedule (a disabled one's next run is computed from now; an enabled one is
    left as it is)."""
    _set_enabled(uid, True, api_url, api_key, json)


@schedule_app.command("disable")
@api_errors
def schedule_disable(uid: Uid, api_url: ApiUrl = None, api_key: ApiKey = None,
                     json: Json = False) -> None:
    """Disable a schedule (it stops firing; its history stays)."""
    _set_enabled(uid, False, api_url, api_key, json)


def _execution_row(e: Execution) -> tuple[Any, ...]:
    return (e.started_at, e.trigger_type, e.trigger_by, e.state, e.task_id, e.duration_ms,
            e.error_message, e.execution_uid)


EXECUTION_COLUMNS = ("started", "trigger", "by", "state", "task_id", "ms", "error",
                     "execution_uid")


@schedule_app.command("trigger")
@api_errors
def schedule_trigger(uid: Uid, api_url: ApiUrl = None, api_key: ApiKey = None,
                     json: Json = False) -> None:
    """Fire it now (a manual execution and its task; max_concurrent still applies)."""
    with client(api_url, api_key) as c:
        execution = c.trigger_schedule(uid)
    if json:
        print_json(execution)
    else:
        out.print(f"triggered {execution.task_name}: execution {execution.execution_uid} "
                  f"{execution.state}, task {execution.task_id or '-'}", highlight=False)


@schedule_app.command("history")
@api_errors
def schedule_history(
    uid: Uid,
    state: Annotated[str | None, typer.Option(help="pending, running, success, failure, "
                                                   "timeout, cancelled, interrupted")] = None,
    trigger: Annotated[str | None, typer.Option(help="scheduled or manual")] = None,
    limit: Annotated[int, typer.Option(min=1, help="Rows at most (pages are followed).")] = 50,
    api_url: ApiUrl = None, api_key: ApiKey = None, json: Json = False,
) -> None:
    """The schedule's executions, newest first."""
    with client(api_url, api_key) as c:
        items = take(c.iter_executions(uid, page_size=min(limit, 500), state=state,
                                       trigger_type=trigger), limit)
    if json:
        print_json(items)
    else:
        table(f"{len(items)} executions of {uid}", EXECUTION_COLUMNS,
              (_execution_row(e) for e in items))


@schedule_app.command("delete")
@api_errors
def schedule_delete(uid: Uid, api_url: ApiUrl = None, api_key: ApiKey = None) -> None:
    """Delete a schedule (its execution history stays until retention removes it)."""
    with client(api_url, api_key) as c:
        c.delete_schedule(uid)
    out.print(f"deleted {uid}", highlight=False)
