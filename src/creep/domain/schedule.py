"""ScheduledTask (seed 003) and the pure rules around it: validation, slot planning (the
interval grid, cron, misfires) and the TaskOrder a firing creates."""

from __future__ import annotations

import math
import re
import uuid
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from enum import StrEnum
from typing import Any

import orjson

from creep.domain.cron import next_cron, validate_cron, validate_timezone
from creep.domain.errors import ConflictError, ValidationError
from creep.domain.execution import TriggerType
from creep.domain.ids import canonical_uuid
from creep.domain.task_spec import Limits, TaskSpec, validate_task_spec
from creep.domain.text import bad_text, find_unwritable, may_hold_nul

MAX_DATA_BYTES = 10 * 1024  # seed 003: ScheduledTask.data larger than 10 KB is rejected
MAX_MISFIRE_LIMIT = 1000
DEFAULT_PRIORITY = 0  # seed 003: `priority` default 0
#: Slots enumerated at most per sweep when catching up a cron schedule.
MAX_CRON_SCAN = 10_000


#: The tenant of the built-in schedules (retention jobs), which the leader scheduler runs
#: itself instead of queueing a task.
SYSTEM_TENANT = "_system"
#: A schedule's interval is at most a year (the REST API's bound too).
MAX_INTERVAL_S = 366 * 86400


class LeadershipLost(ConflictError):
    """This scheduler no longer holds the leader lock (expired or taken over): its write was
    refused (fencing)."""

    def __init__(self, lock_key: str) -> None:
        self.lock_key = lock_key
        super().__init__(f"lock {lock_key!r} is no longer held by this process (fenced)")


class MisfirePolicy(StrEnum):
    SKIP = "skip"  # slots missed by more than the grace are dropped
    ONCE = "once"  # all missed slots are coalesced into one firing (the latest)
    ALL = "all"  # every missed slot fires, bounded by misfire_limit (the latest ones)


# -- the models ----------------------------------------------------------------------------------


@dataclass(slots=True)
class ScheduledTask:
    uid: str
    tenant_id: str
    name: str
    type: str
    description: str | None
    is_recurring: bool
    cron_expr: str | None
    interval: int | None
    timezone: str
    next_run: datetime | None
    enabled: bool
    max_duration_seconds: int
    max_retries: int
    timeout_grace_period: int
    max_concurrent: int
    priority: int
    labels: dict[str, str]
    data: str | None
    misfire_policy: MisfirePolicy
    misfire_limit: int
    misfire_grace_seconds: int
    # The TaskOrder template.
    project_id: str | None
    env: str
    resource_hints: list[dict[str, Any]]
    tags: list[str]
    max_total_cost: Decimal | None
    currency: str
    # Statistics.
    total_executions: int = 0
    success_executions: int = 0
    failure_executions: int = 0
    consecutive_failures: int = 0
    last_executed_at: datetime | None = None
    last_failure_error: str | None = None
    anchor_at: datetime | None = None  # the interval grid: slots are anchor + k * interval
    version: int = 1
    created_at: datetime | None = None
    updated_at: datetime | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(slots=True)
class Firing:
    """One slot (or manual trigger) to record; the store decides skip vs. run atomically."""

    scheduled_at: datetime
    trigger_type: TriggerType = TriggerType.SCHEDULED
    trigger_by: str | None = None
    execution_uid: str = field(default_factory=lambda: str(uuid.uuid4()))
    task_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    #: The TaskOrder this firing creates, written in the same transaction as its execution
    #: (None: a built-in job the scheduler runs itself).
    spec: TaskSpec | None = None
    #: Why the TaskOrder failed validation: the execution is recorded `failure`, no task.
    invalid: str | None = None


# -- validation ----------------------------------------------------------------------------------

FIELDS = frozenset(
    {
        "uid", "tenant_id", "name", "type", "description", "cron_expr", "interval", "timezone",
        "next_run", "enabled", "max_duration_seconds", "max_retries", "timeout_grace_period",
        "max_concurrent", "priority", "labels", "data", "misfire_policy", "misfire_limit",
        "misfire_grace_seconds", "project_id", "env", "resource_hints", "tags",
        "max_total_cost", "currency", "is_recurring",
    }
)
#: Fields a caller may change on an existing schedule.
UPDATABLE = FIELDS - {"uid", "tenant_id", "is_recurring"}


class _Errs:
    def __init__(self) -> None:
        self.items: list[tuple[str, str]] = []

    def add(self, name: str, rule: str) -> None:
        self.items.append((name, rule))


def _int(errs: _Errs, d: Mapping[str, Any], name: str, default: int, lo: int, hi: int) -> int:
    v = d.get(name, default)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        errs.add(name, f"must be an integer between {lo} and {hi}")
        return default
    return v


def _str(
    errs: _Errs, d: Mapping[str, Any], name: str, *, required: bool = False,
    default: str | None = None, max_len: int = 255,
) -> str | None:
    v = d.get(name)
    if v is None:
        if required and default is None:
            errs.add(name, "is required")
        return default
    if not isinstance(v, str) or (required and not v.strip()):
        errs.add(name, "must be a non-empty string" if required else "must be a string")
        return default
    if len(v) > max_len:
        errs.add(name, f"must be at most {max_len} characters")
        return default
    rule = bad_text(v)  # NUL or a lone surrogate: no database stores it
    if rule is not None:
        errs.add(name, rule)
        return default
    return v


def _storable(errs: _Errs, value: Any, name: str) -> bool:
    """Whether every string in `value` (keys too) is text both databases store and it nests
    no deeper than tasks' JSON may; if not, the error names the field (and the path inside
    it)."""
    found = find_unwritable(value, name)
    if found is not None:
        errs.add(*found)
    return found is None


def _data(errs: _Errs, value: Any) -> str | None:
    """`data` is a JSON document (a JSON text or any JSON-serialisable value), at most 10 KB."""
    if value is None:
        return None
    if isinstance(value, str):
        text = value
        if (rule := bad_text(text)) is not None:
            errs.add("data", rule)
            return None
        if len(text.encode()) <= MAX_DATA_BYTES:  # too big is reported below, whatever it is
            try:
                parsed = orjson.loads(value)
            except orjson.JSONDecodeError:
                errs.add("data", "must be valid JSON text")
                return None
            # An escaped NUL (\u0000) decodes to a string no database stores.
            if may_hold_nul(text.encode()) and not _storable(errs, parsed, "data"):
                return None
    else:
        if not _storable(errs, value, "data"):
            return None
        try:
            text = orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()
        except TypeError:
            errs.add("data", "must be JSON-serialisable")
            return None
    size = len(text.encode())
    if size > MAX_DATA_BYTES:
        errs.add("data", f"is {size} bytes; at most {MAX_DATA_BYTES} bytes (10 KB) are allowed")
        return None
    return text


#: TaskOrder fields a firing fills from a schedule field of another name (task_fields);
#: the template's other fields have the schedule field's name.
_ORDER_TO_SCHEDULE = {
    "task_type": "type", "input_payload": "data", "timeout_ms": "max_duration_seconds",
    "constraints.max_retries": "max_retries",
    "constraints.timeout_grace_ms": "timeout_grace_period",
    "idempotency_key": "uid", "external_ref": "uid",
}


def _schedule_field(order_field: str) -> str:
    """The schedule field (and path inside it) a TaskOrder error is about."""
    for order, own in _ORDER_TO_SCHEDULE.items():
        if order_field == order or order_field.startswith((f"{order}.", f"{order}[")):
            return own + order_field[len(order):]
    return order_field


def _top(name: str) -> str:
    return re.split(r"[.\[]", name, maxsplit=1)[0]


def _check_template(
    errs: _Errs, sched: ScheduledTask, *, now: datetime, limits: Limits,
    given: Mapping[str, Any] | None,
) -> TaskSpec | None:
    """Check the TaskOrder the schedule's firings create with the task validator itself, so
    a schedule is refused up front instead of recording `the task order is invalid` at every
    firing. Errors name schedule fields (task_type -> type, input_payload -> data, ...); a
    field already reported is not reported twice. On update (`given`: the changed fields)
    only problems of changed fields are reported: a schedule stored before this check can
    still be disabled or mended one field at a time."""
    # A manual trigger's idempotency key is the longest a firing makes.
    probe = Firing(now, TriggerType.MANUAL, "check")
    try:
        return validate_task_spec(
            task_fields(sched, probe), now=now, limits=limits, traced=False
        )
    except ValidationError as exc:
        reported = {_top(name) for name, _ in errs.items}
        for name, rule in exc.errors:
            own = _schedule_field(name)
            if _top(own) in reported or (given is not None and _top(own) not in given):
                continue
            errs.add(own, rule)
        return None


def validate_schedule(
    fields: Mapping[str, Any], *, now: datetime, existing: ScheduledTask | None = None,
    limits: Limits | None = None,
) -> ScheduledTask:
    """Build a ScheduledTask from caller fields (merged over `existing` on update). Every
    problem is reported at once, each naming its field and rule. The TaskOrder template
    (and the fields a firing copies into its order) must pass the task order's own rules
    (validate_task_spec with `limits`, as at firing time)."""
    unknown = sorted(set(fields) - (UPDATABLE if existing else FIELDS))
    errs = _Errs()
    for bad in unknown:
        errs.add(bad, "is not a schedule field" if bad not in FIELDS else "cannot be changed")
    base: dict[str, Any] = {}
    if existing is not None:
        base = existing.to_dict()
        base["misfire_policy"] = existing.misfire_policy.value
    d = {**base, **fields}
    if existing is not None and ("cron_expr" in fields or "interval" in fields):
        # Switching kind: a new cron_expr clears the interval and vice versa.
        if fields.get("cron_expr") is not None and "interval" not in fields:
            d["interval"] = None
        if fields.get("interval") is not None and "cron_expr" not in fields:
            d["cron_expr"] = None
    # A caller may choose the uid of a new schedule (it is fixed afterwards); one that is a
    # UUID is kept in creep's form, so that any spelling of it finds the schedule.
    uid = canonical_uuid(_str(errs, d, "uid", max_len=128)) if existing is None else existing.uid
    tenant = _str(errs, d, "tenant_id", required=True, default="default")
    name = _str(errs, d, "name", required=True)
    # A uid or name is one segment of the schedule's REST paths (a tenant key reads it by
    # name): with a '/' it could be created but never read, changed or deleted there. Checked
    # when set, so an older schedule named so can still be updated.
    for key, value, before in (("uid", uid, existing.uid if existing else None),
                               ("name", name, existing.name if existing else None)):
        if value is not None and value != before and "/" in value:
            errs.add(key, "must not contain '/' (it is a segment of the schedule's URL)")
    task_type = _str(errs, d, "type", required=True)
    description = _str(errs, d, "description", max_len=10_000)
    tz: str = "UTC"
    try:
        tz = validate_timezone(d.get("timezone") or "UTC")
    except ValidationError as exc:
        errs.items.extend(exc.errors)
    cron: str | None = None
    if d.get("cron_expr") is not None:
        try:
            cron = validate_cron(d["cron_expr"])
        except ValidationError as exc:
            errs.items.extend(exc.errors)
    interval = d.get("interval")
    if interval is not None and (
        isinstance(interval, bool) or not isinstance(interval, int)
        or not 0 < interval <= MAX_INTERVAL_S
    ):
        errs.add("interval", f"must be a whole number of seconds from 1 to {MAX_INTERVAL_S}")
        interval = None
    if d.get("cron_expr") is not None and d.get("interval") is not None:
        errs.add("cron_expr", "give either cron_expr or interval, not both")
    is_recurring = d.get("cron_expr") is not None or d.get("interval") is not None
    # A recurring schedule's stored next_run is derived; only a caller's next_run is a start.
    next_run = fields.get("next_run") if (
        existing is None or "next_run" in fields or is_recurring
    ) else (existing.next_run or existing.anchor_at)  # a disabled one-off keeps its time there
    if next_run is not None and (not isinstance(next_run, datetime) or next_run.tzinfo is None):
        errs.add("next_run", "must be a datetime with a time zone")
        next_run = None
    if not is_recurring and next_run is None:
        errs.add("cron_expr", "a schedule needs cron_expr, interval, or (one-off) next_run")
    if "is_recurring" in fields and fields["is_recurring"] != is_recurring:
        errs.add("is_recurring", "follows from cron_expr/interval (true when either is set)")
    enabled = d.get("enabled", True)
    if not isinstance(enabled, bool):
        errs.add("enabled", "must be a boolean")
        enabled = True
    max_duration = _int(errs, d, "max_duration_seconds", 3600, 1, 7 * 24 * 3600)
    max_retries = _int(errs, d, "max_retries", 3, 0, 1000)
    grace = _int(errs, d, "timeout_grace_period", 30, 0, 7 * 24 * 3600)
    if not grace < max_duration:
        errs.add("timeout_grace_period", "must be >= 0 and < max_duration_seconds")
    max_concurrent = _int(errs, d, "max_concurrent", 1, 1, 10_000)
    # Seed 003: default 0 (higher runs first); the TaskOrder gets it as its queue priority.
    priority = _int(errs, d, "priority", DEFAULT_PRIORITY, 0, 100)
    labels = d.get("labels") or {}
    if not isinstance(labels, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in labels.items()
    ):
        errs.add("labels", "must be a map of strings to strings")
        labels = {}
    elif not _storable(errs, labels, "labels"):
        labels = {}
    data = _data(errs, d.get("data"))
    policy = MisfirePolicy.ONCE
    try:
        policy = MisfirePolicy(d.get("misfire_policy") or "once")
    except ValueError:
        errs.add("misfire_policy", "must be one of skip, once, all")
    misfire_limit = _int(errs, d, "misfire_limit", 10, 1, MAX_MISFIRE_LIMIT)
    misfire_grace = _int(errs, d, "misfire_grace_seconds", 60, 0, 7 * 24 * 3600)
    project_id = _str(errs, d, "project_id")
    env = _str(errs, d, "env", default="default", max_len=64) or "default"
    sched = ScheduledTask(
        uid=uid or str(uuid.uuid4()), tenant_id=tenant or "default", name=name or "",
        type=task_type or "", description=description, is_recurring=is_recurring,
        cron_expr=cron, interval=interval, timezone=tz, next_run=next_run, enabled=enabled,
        max_duration_seconds=max_duration, max_retries=max_retries,
        timeout_grace_period=grace, max_concurrent=max_concurrent, priority=priority,
        labels=dict(labels), data=data, misfire_policy=policy, misfire_limit=misfire_limit,
        misfire_grace_seconds=misfire_grace, project_id=project_id, env=env,
        # The rest of the TaskOrder template is checked by the task validator just below.
        resource_hints=d.get("resource_hints") or [], tags=d.get("tags") or [],
        max_total_cost=d.get("max_total_cost"), currency=d.get("currency") or "USD",
    )
    order = _check_template(
        errs, sched, now=now, limits=limits or Limits(),
        given=None if existing is None else fields,
    )
    if errs.items:
        raise ValidationError(errs.items)
    if order is not None:  # None: an unchanged field of a stored schedule is refused
        sched.max_total_cost = order.max_total_cost  # the exact decimal the order gets
    elif sched.max_total_cost is not None and not isinstance(sched.max_total_cost, Decimal):
        sched.max_total_cost = Decimal(str(sched.max_total_cost))
    if existing is not None:
        for stat in (
            "total_executions", "success_executions", "failure_executions",
            "consecutive_failures", "last_executed_at", "last_failure_error", "anchor_at",
            "version", "created_at",
        ):
            setattr(sched, stat, getattr(existing, stat))
    schedule_changed = existing is None or changes_timing(fields, existing, sched)
    if schedule_changed:
        if interval is not None and (
            existing is None or existing.interval != interval or "next_run" in fields
        ):
            sched.anchor_at = next_run or now
        if not is_recurring:
            # A one-off's time survives being disabled (anchor_at, unused by one-offs), so
            # enabling it again brings it back.
            sched.anchor_at = None if sched.enabled else next_run
        sched.next_run = first_run(sched, now) if sched.enabled else None
    elif existing is not None:
        sched.next_run = existing.next_run  # data, priority, tags...: the timing stands
    sched.created_at = sched.created_at or now
    sched.updated_at = now
    return sched


def changes_timing(
    fields: Mapping[str, Any], existing: ScheduledTask, updated: ScheduledTask
) -> bool:
    """Whether an update moves the timing, so next_run is recomputed and written: a given
    next_run, or another cron_expr, interval, timezone or `enabled`. Enabling an enabled
    schedule (or repeating its cron_expr) must not jump past a slot that is due but not fired
    yet, and an update of other fields must not write back the next_run it read: the leader
    may have fired that slot since."""
    return "next_run" in fields or (
        updated.cron_expr, updated.interval, updated.timezone, updated.enabled
    ) != (existing.cron_expr, existing.interval, existing.timezone, existing.enabled)


# -- slot planning -------------------------------------------------------------------------------


def next_slot(sched: ScheduledTask, after: datetime) -> datetime | None:
    """The first slot strictly after `after`. Interval slots lie on the grid
    anchor + k * interval, so lateness in firing never shifts later slots (no drift)."""
    if sched.cron_expr is not None:
        return next_cron(sched.cron_expr, after, sched.timezone)
    if sched.interval is not None:
        anchor = sched.anchor_at or after
        step = timedelta(seconds=sched.interval)
        if after < anchor:
            return anchor
        k = math.floor((after - anchor) / step) + 1
        return anchor + k * step
    return None


def first_run(sched: ScheduledTask, now: datetime) -> datetime | None:
    """next_run after a create/update/enable: the next slot from now (a one-off keeps its time)."""
    if not sched.is_recurring:
        return sched.next_run
    if sched.interval is not None and sched.anchor_at is not None and sched.anchor_at > now:
        return sched.anchor_at
    return next_slot(sched, now)


@dataclass(slots=True)
class FirePlan:
    fire: list[datetime]  # slots to fire now, oldest first
    missed: int  # slots dropped by the misfire policy
    next_run: datetime | None  # the first slot after now (None: a one-off is done)


def plan_firings(sched: ScheduledTask, now: datetime) -> FirePlan:
    """Which slots in [next_run, now] fire now. Slots late by more than misfire_grace_seconds
    are misfires and follow misfire_policy; later ones fire as usual."""
    due = sched.next_run
    if due is None or due > now:
        return FirePlan([], 0, due)
    if not sched.is_recurring:
        overdue = (now - due).total_seconds() > sched.misfire_grace_seconds
        if overdue and sched.misfire_policy is MisfirePolicy.SKIP:
            return FirePlan([], 1, None)
        return FirePlan([due], 0, None)
    grace_edge = now - timedelta(seconds=sched.misfire_grace_seconds)
    late: list[datetime] = []
    on_time: list[datetime] = []
    late_count = 0
    nxt: datetime | None
    if sched.interval is not None:
        step = timedelta(seconds=sched.interval)
        total = math.floor((now - due) / step) + 1
        # Slots due + i*step with i < first_on_time are misfires.
        first_on_time = 0 if due >= grace_edge else math.ceil((grace_edge - due) / step)
        first_on_time = min(first_on_time, total)
        late_count = first_on_time
        keep = _late_keep(sched, late_count)
        late = [due + i * step for i in range(late_count - keep, late_count)]
        on_time = [due + i * step for i in range(first_on_time, total)]
        nxt = due + total * step
    else:
        late_all, on_time, skipped = _cron_slots(sched, due, now, grace_edge)
        late_count = len(late_all) + skipped
        keep = min(_late_keep(sched, late_count), len(late_all))
        late = late_all[len(late_all) - keep:] if keep else []
        nxt = next_slot(sched, now)
    return FirePlan(late + on_time, late_count - len(late), nxt)


def _cron_slots(
    sched: ScheduledTask, due: datetime, now: datetime, grace_edge: datetime
) -> tuple[list[datetime], list[datetime], int]:
    """The cron slots in [due, now]: (late ones, those within the grace, how many late ones
    were not listed). Past MAX_CRON_SCAN slots (a long outage of a frequent cron) the scan
    starts again near the end, far enough back for the late slots the misfire policy keeps,
    and the slots in between are counted from their average spacing."""
    late: list[datetime] = []
    on_time: list[datetime] = []
    slot: datetime | None = due
    while slot is not None and slot <= now and len(late) + len(on_time) < MAX_CRON_SCAN:
        (late if slot < grace_edge else on_time).append(slot)
        slot = next_slot(sched, slot)
    if slot is None or slot > now:
        return late, on_time, 0
    head_end = slot  # the first slot not looked at
    gap = (head_end - due) / (len(late) + len(on_time))
    wanted = max(1, sched.misfire_limit) if sched.misfire_policy is MisfirePolicy.ALL else 1
    back = gap * (wanted + 1)
    while True:
        start = max(head_end, grace_edge - back)
        tail_late: list[datetime] = []
        tail_on: list[datetime] = []
        tick = start if start == head_end else next_slot(sched, start - timedelta(microseconds=1))
        while (tick is not None and tick <= now
               and len(tail_late) + len(tail_on) < MAX_CRON_SCAN):
            (tail_late if tick < grace_edge else tail_on).append(tick)
            tick = next_slot(sched, tick)
        if len(tail_late) >= wanted or start == head_end:
            break
        back *= 2
    skipped = 0 if start == head_end else max(0, round((start - head_end) / gap))
    return late + tail_late, on_time + tail_on, skipped


def _late_keep(sched: ScheduledTask, late_count: int) -> int:
    if late_count == 0 or sched.misfire_policy is MisfirePolicy.SKIP:
        return 0
    if sched.misfire_policy is MisfirePolicy.ONCE:
        return 1
    return min(late_count, sched.misfire_limit)


def task_fields(sched: ScheduledTask, firing: Firing) -> dict[str, Any]:
    """The TaskOrder a firing creates; its idempotency key is derived from schedule + slot."""
    slot = firing.scheduled_at.isoformat()
    key = (
        f"schedule:{sched.uid}:{slot}" if firing.trigger_type is TriggerType.SCHEDULED
        else f"schedule:{sched.uid}:manual:{firing.execution_uid}"
    )
    payload: Any = None if sched.data is None else orjson.loads(sched.data)
    return {
        "task_id": firing.task_id, "idempotency_key": key, "tenant_id": sched.tenant_id,
        "project_id": sched.project_id, "env": sched.env, "task_type": sched.type,
        "task_category": "scheduled", "description": sched.description,
        "priority": sched.priority, "timeout_ms": sched.max_duration_seconds * 1000,
        "max_total_cost": sched.max_total_cost, "currency": sched.currency,
        "resource_hints": sched.resource_hints, "tags": sched.tags,
        # The control plane calls the task timed out only after max_duration + grace.
        "constraints": {"max_retries": sched.max_retries,
                        "timeout_grace_ms": sched.timeout_grace_period * 1000},
        "input_payload": payload, "external_ref": f"schedule:{sched.uid}",
    }


def attach_task_specs(
    sched: ScheduledTask, firings: list[Firing], *, now: datetime, limits: Limits
) -> list[Firing]:
    """Give each firing its validated TaskOrder, so the store writes the execution and the
    task in one transaction; an order that fails validation is kept on the firing instead."""
    for f in firings:
        try:
            f.spec = validate_task_spec(task_fields(sched, f), now=now, limits=limits)
        except ValidationError as exc:
            f.invalid = f"the task order is invalid: {exc}"
    return firings
