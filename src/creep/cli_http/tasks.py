"""`creep task ...` and `creep batch ...` over the REST API."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer

from creep.cli_http.common import (
    EXIT_UNFINISHED,
    ApiKey,
    ApiUrl,
    Json,
    api_errors,
    client,
    err,
    out,
    parse_json_arg,
    parse_json_object,
    print_json,
    progress,
    show,
    table,
    take,
    usage_error,
)
from creep.client import Batch, Client, ClientError, Task, TaskEvent
from creep.domain.text import loads_exact

task_app = typer.Typer(help="Tasks over the REST API.", no_args_is_help=True)
batch_app = typer.Typer(help="Batches over the REST API.", no_args_is_help=True)

TASK_COLUMNS = ("task_id", "tenant", "type", "status", "prio", "attempt", "result", "created")


def _task_row(t: Task) -> tuple[Any, ...]:
    return (t.task_id, t.tenant_id, t.task_type, t.status, t.priority, t.attempt,
            t.result_code, t.created_at)


def _event_row(e: TaskEvent) -> tuple[Any, ...]:
    transition = f"{e.from_status or ''} -> {e.to_status}" if e.to_status else ""
    return (e.created_at, e.event_type, transition, e.attempt, e.payload or "")


@task_app.command("submit")
@api_errors
def task_submit(
    task_type: Annotated[str, typer.Option("--type", help="task_type (a handler name)")],
    payload: Annotated[str | None, typer.Option(help="input_payload: JSON or @FILE")] = None,
    tenant: Annotated[str | None, typer.Option(help="tenant_id (admin keys must give it)")] = None,
    env: Annotated[str | None, typer.Option(help="env (default: the server's)")] = None,
    priority: Annotated[int | None, typer.Option(min=0, max=100)] = None,
    idempotency_key: Annotated[
        str | None, typer.Option("--idempotency-key", help="default: a new UUID")
    ] = None,
    tag: Annotated[list[str] | None, typer.Option(help="a tag (repeatable)")] = None,
    order: Annotated[
        str | None, typer.Option(help="more TaskOrder fields: a JSON object or @FILE")
    ] = None,
    wait: Annotated[bool, typer.Option(help="Wait until the task is finished.")] = False,
    timeout: Annotated[float, typer.Option(help="Seconds --wait waits at most.")] = 300.0,
    api_url: ApiUrl = None, api_key: ApiKey = None, json: Json = False,
) -> None:
    """Submit one task order; prints the task (exit 3 with --wait unless it succeeded, also
    when it is still unfinished at --timeout)."""
    body: dict[str, Any] = {}
    if order is not None:
        body.update(parse_json_object(order, "--order"))
    fields = {"task_type": task_type, "tenant_id": tenant, "env": env, "priority": priority,
              "idempotency_key": idempotency_key, "tags": tag or None}
    body.update({k: v for k, v in fields.items() if v is not None})
    if payload is not None:
        body["input_payload"] = parse_json_arg(payload, "--payload")
    with client(api_url, api_key) as c:
        task = c.create_task(body)
        if wait:
            try:
                task = c.wait_task(task.task_id, timeout=timeout)
            except TimeoutError:  # unfinished at --timeout: print the task as it is now
                task = c.get_task(task.task_id)
                if not task.is_terminal:
                    err.print(f"task {task.task_id} is still {task.status} after --timeout "
                              f"{timeout:g} s", highlight=False)
    show(task, json, f"task {task.task_id}")
    if wait and task.status != "SUCCESS":
        raise typer.Exit(EXIT_UNFINISHED)


@task_app.command("list")
@api_errors
def task_list(
    status: Annotated[str | None, typer.Option(help="PENDING, QUEUED, RUNNING, SUCCESS, ...")] = None,
    task_type: Annotated[str | None, typer.Option("--type")] = None,
    tenant: Annotated[str | None, typer.Option()] = None,
    batch: Annotated[str | None, typer.Option(help="batch_id")] = None,
    tag: Annotated[str | None, typer.Option()] = None,
    env: Annotated[str | None, typer.Option()] = None,
    deleted: Annotated[bool, typer.Option(
        "--deleted", help="Only the deleted tasks (the recycle bin).")] = False,
    limit: Annotated[int, typer.Option(min=1, help="Rows at most (pages are followed).")] = 50,
    api_url: ApiUrl = None, api_key: ApiKey = None, json: Json = False,
) -> None:
    """Tasks, newest first (deleted ones only with --deleted)."""
    filters = {"status": status, "task_type": task_type, "tenant_id": tenant,
               "batch_id": batch, "tag": tag, "env": env, "deleted": deleted or None}
    with client(api_url, api_key) as c:
        tasks = take(c.iter_tasks(page_size=min(limit, 500), **filters), limit)
    if json:
        print_json(tasks)
    else:
        table(f"{len(tasks)} tasks", TASK_COLUMNS, (_task_row(t) for t in tasks))


@task_app.command("show")
@api_errors
def task_show(task_id: str, api_url: ApiUrl = None, api_key: ApiKey = None,
              json: Json = False) -> None:
    """One task, every field."""
    with client(api_url, api_key) as c:
        task = c.get_task(task_id)
    show(task, json, f"task {task.task_id}")


@task_app.command("cancel")
@api_errors
def task_cancel(
    task_id: str, reason: Annotated[str | None, typer.Option()] = None,
    api_url: ApiUrl = None, api_key: ApiKey = None, json: Json = False,
) -> None:
    """Cancel a task (a RUNNING task is asked to stop)."""
    with client(api_url, api_key) as c:
        task = c.cancel_task(task_id, reason)
    if json:
        print_json(task)
    else:
        out.print(f"{task.task_id}: {task.status}"
                  + (" (cancel requested)" if task.raw.get("cancel_requested") else ""))


@task_app.command("retry")
@api_errors
def task_retry(task_id: str, api_url: ApiUrl = None, api_key: ApiKey = None,
               json: Json = False) -> None:
    """Queue a FAILED, CANCELLED, TIMEOUT or DEAD_LETTER task again."""
    with client(api_url, api_key) as c:
        task = c.retry_task(task_id)
    if json:
        print_json(task)
    else:
        out.print(f"{task.task_id}: {task.status}")


Version = Annotated[int | None, typer.Option(
    "--version", min=1, help="Only if the task is still at this task_version (If-Match).")]


@task_app.command("delete")
@api_errors
def task_delete(task_id: str, version: Version = None, api_url: ApiUrl = None,
                api_key: ApiKey = None, json: Json = False) -> None:
    """Move a finished task to the recycle bin (an unfinished one: cancel it first)."""
    with client(api_url, api_key) as c:
        task = c.delete_task(task_id, expected_version=version)
    _print_binned(task, json)


@task_app.command("restore")
@api_errors
def task_restore(task_id: str, version: Version = None, api_url: ApiUrl = None,
                 api_key: ApiKey = None, json: Json = False) -> None:
    """Take a deleted task out of the recycle bin."""
    with client(api_url, api_key) as c:
        task = c.restore_task(task_id, expected_version=version)
    _print_binned(task, json)


def _print_binned(task: Task, json: bool) -> None:
    """A task just deleted or restored: its status, and when it was deleted if it is."""
    if json:
        print_json(task)
        return
    deleted = f", deleted at {task.deleted_at}" if task.deleted_at else ""
    out.print(f"{task.task_id}: {task.status}{deleted}", highlight=False)


@task_app.command("events")
@api_errors
def task_events(
    task_id: str,
    follow: Annotated[bool, typer.Option("--follow", "-f",
                                         help="Stream events until the task is finished.")] = False,
    api_url: ApiUrl = None, api_key: ApiKey = None, json: Json = False,
) -> None:
    """A task's events, oldest first (--follow: live, over Server-Sent Events)."""
    with client(api_url, api_key) as c:
        if follow:
            for event in c.follow_task_events(task_id):
                if json:  # one JSON object per line while following
                    print(orjson.dumps(event.raw).decode(), flush=True)
                else:
                    created, kind, transition, attempt, payload = _event_row(event)
                    out.print(f"{created:%H:%M:%S} {kind:<12} {transition:<24} attempt {attempt}"
                              f" {orjson.dumps(payload).decode() if payload else ''}",
                              highlight=False)
            return
        events = list(c.iter_task_events(task_id))
    if json:
        print_json(events)
    else:
        table(f"events of {task_id}", ("at", "event", "transition", "attempt", "payload"),
              (_event_row(e) for e in events))


# -- batches --------------------------------------------------------------------------------
def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Every line a task order (blank lines skipped); a bad line is exit 2 naming it."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        usage_error(f"cannot read {str(path)!r}: {exc}")
    tasks: list[dict[str, Any]] = []
    problems: list[str] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            value = loads_exact(line)
        except ValueError as exc:  # orjson.JSONDecodeError included
            problems.append(f"line {number}: not valid JSON ({exc})")
            continue
        if not isinstance(value, dict):
            problems.append(f"line {number}: must be a JSON object (a task order)")
            continue
        if not value.get("task_type"):
            problems.append(f"line {number}: task_type is required")
        tasks.append(value)
    if problems:
        usage_error(f"{path}:\n  " + "\n  ".join(problems))
    if not tasks:
        usage_error(f"{path}: no task orders in the file")
    return tasks


def _resolve_refs(chunk: list[dict[str, Any]], known: dict[str, str]) -> list[dict[str, Any]]:
    """depends_on naming a ref of an earlier chunk becomes that task's id."""
    local = {t["ref"] for t in chunk if t.get("ref")}
    out_tasks = []
    for task in chunk:
        deps = task.get("depends_on")
        if deps:
            task = {**task, "depends_on": [
                known[d] if isinstance(d, str) and d not in local and d in known else d
                for d in deps]}
        out_tasks.append(task)
    return out_tasks


def _wait_batches(c: Client, batches: list[Batch], poll: float, timeout: float) -> list[Batch]:
    total = sum(b.total_count for b in batches)
    deadline = time.monotonic() + timeout
    with progress() as bar:
        job = bar.add_task("running", total=total)
        while True:
            batches = [c.get_batch(b.batch_id) for b in batches]
            done = sum(b.completed_count + b.failed_count + b.cancelled_count for b in batches)
            bar.update(job, completed=done)
            if all(b.is_finished for b in batches) or time.monotonic() > deadline:
                return batches
            time.sleep(poll)


@batch_app.command("submit")
@api_errors
def batch_submit(
    file: Annotated[Path, typer.Argument(help="JSON lines: one task order per line "
                                               "(`ref`/`depends_on` link them)")],
    title: Annotated[str | None, typer.Option(help="default: the file name")] = None,
    tenant: Annotated[str | None, typer.Option()] = None,
    chunk_size: Annotated[int, typer.Option(min=1, max=10_000,
                                            help="Tasks per batch request.")] = 1000,
    wait: Annotated[bool, typer.Option(help="Wait (with a progress bar) until it finished.")] = False,
    poll: Annotated[float, typer.Option(min=0.05)] = 0.5,
    timeout: Annotated[float, typer.Option(help="Seconds --wait waits at most.")] = 3600.0,
    api_url: ApiUrl = None, api_key: ApiKey = None, json: Json = False,
) -> None:
    """Submit a file of task orders as batches of --chunk-size tasks (each batch is one
    transaction). A `depends_on` may name a `ref` of an earlier line."""
    tasks = _read_jsonl(file)
    name = title or file.name
    chunks = [tasks[i:i + chunk_size] for i in range(0, len(tasks), chunk_size)]
    batches: list[Batch] = []
    known: dict[str, str] = {}
    with client(api_url, api_key) as c:
        with progress() as bar:
            job = bar.add_task("submitting", total=len(tasks))
            for n, chunk in enumerate(chunks, start=1):
                part = name if len(chunks) == 1 else f"{name} ({n}/{len(chunks)})"
                try:
                    batch = c.create_batch(part, _resolve_refs(chunk, known), tenant_id=tenant)
                except ClientError:
                    if batches:  # earlier chunks are committed: say which, then fail
                        err.print(f"already created before the failure (task orders 1-"
                                  f"{(n - 1) * chunk_size}): "
                                  + ", ".join(b.batch_id for b in batches), highlight=False)
                    raise
                known.update({r["ref"]: r["task_id"] for r in batch.tasks or [] if r.get("ref")})
                batches.append(batch)
                bar.advance(job, len(chunk))
        if wait:
            batches = _wait_batches(c, batches, poll, timeout)
    if json:
        print_json(batches)
    else:
        table(f"{len(tasks)} tasks in {len(batches)} batch(es)",
              ("batch_id", "title", "status", "total", "done", "failed", "cancelled"),
              ((b.batch_id, b.title, b.status, b.total_count, b.completed_count, b.failed_count,
                b.cancelled_count) for b in batches))
    if wait and not all(b.status == "completed" and b.failed_count == 0 for b in batches):
        raise typer.Exit(EXIT_UNFINISHED)


@batch_app.command("list")
@api_errors
def batch_list(limit: Annotated[int, typer.Option(min=1)] = 20, api_url: ApiUrl = None,
               api_key: ApiKey = None, json: Json = False) -> None:
    """Batches, newest first."""
    with client(api_url, api_key) as c:
        batches = take(c.iter_batches(page_size=min(limit, 100)), limit)
    if json:
        print_json(batches)
    else:
        table(f"{len(batches)} batches", ("batch_id", "tenant", "title", "status", "progress",
                                          "total", "created"),
              ((b.batch_id, b.tenant_id, b.title, b.status, f"{b.progress}%", b.total_count,
                b.created_at) for b in batches))


@batch_app.command("show")
@api_errors
def batch_show(batch_id: str, api_url: ApiUrl = None, api_key: ApiKey = None,
               json: Json = False) -> None:
    """One batch with its counts."""
    with client(api_url, api_key) as c:
        batch = c.get_batch(batch_id)
    show(batch, json, f"batch {batch.batch_id}")


@batch_app.command("cancel")
@api_errors
def batch_cancel(batch_id: str, api_url: ApiUrl = None, api_key: ApiKey = None,
                 json: Json = False) -> None:
    """Cancel every unfinished task of a batch."""
    with client(api_url, api_key) as c:
        batch = c.cancel_batch(batch_id)
    if json:
        print_json(batch)
    else:
        out.print(f"{batch.batch_id}: {batch.status}")


__all__ = ["batch_app", "err", "task_app"]
