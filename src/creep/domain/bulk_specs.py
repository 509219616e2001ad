"""Validation of a bulk submission in two halves: check every order, then build the specs.

Checking can fail and must see every order before anything is written (one bad order
rejects the whole submission); building the common orders cannot fail, so a caller may build
chunk k+1 while chunk k is being written (app.submit_many). The common order (fast_check's)
is built as fast_build builds it, with its task ids made a batch at a time (uuid7_many: one
clock read, one random read and one lock instead of one each per task).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from creep.domain.errors import ValidationError
from creep.domain.ids import uuid7_many
from creep.domain.task_spec import (
    Limits,
    TaskSpec,
    common_spec,
    fast_check,
    trace_submit,
    validate_full,
)
from creep.tracing import tracer

#: An order after checking: its input payload's JSON (a common order, built later) or its
#: spec (any other order, which the full path checked and built at once).
Checked = bytes | TaskSpec


def check_orders(
    items: Sequence[Mapping[str, Any]], *, now: datetime, limits: Limits,
    traced: bool | None = None,
) -> list[Checked]:
    """Check every order; raise one ValidationError naming every problem of every order
    (fields prefixed `tasks[i].`)."""
    errors: list[tuple[str, str]] = []
    out: list[Checked] = []
    append = out.append
    for i, data in enumerate(items):
        payload_json = fast_check(data, limits)
        if payload_json is not None:
            append(payload_json)
            continue
        try:
            append(validate_full(
                data, now=now, limits=limits, prefix=f"tasks[{i}].", traced=traced,
            ))
        except ValidationError as exc:
            errors.extend(exc.errors)
    if errors:
        raise ValidationError(errors)
    return out


def build_specs(
    items: Sequence[Mapping[str, Any]], checked: Sequence[Checked], limits: Limits,
    traced: bool | None = None,
) -> list[TaskSpec]:
    """The specs of `items` (in order), given check_orders' answers for them."""
    fast = [i for i, c in enumerate(checked) if type(c) is bytes]
    if len(fast) == len(checked):
        return fast_build_many(items, checked, limits, traced)  # type: ignore[arg-type]
    specs: list[TaskSpec | None] = [c if isinstance(c, TaskSpec) else None for c in checked]
    built = fast_build_many(
        [items[i] for i in fast], [checked[i] for i in fast],  # type: ignore[misc]
        limits, traced,
    )
    for i, spec in zip(fast, built, strict=True):
        specs[i] = spec
    return [s for s in specs if s is not None]


def fast_build_many(
    items: Sequence[Mapping[str, Any]], payloads: Sequence[bytes], limits: Limits,
    traced: bool | None = None,
) -> list[TaskSpec]:
    """fast_build of each order (one fast_check accepted, with its payload JSON), in order."""
    if traced is None:
        traced = tracer() is not None
    default_timeout = limits.default_timeout_ms
    out: list[TaskSpec] = []
    append = out.append
    for data, payload_json, task_id in zip(
        items, payloads, uuid7_many(len(items)), strict=True
    ):
        spec = common_spec(data, payload_json, task_id, default_timeout)
        append(spec)
        if traced:
            trace_submit(spec)
    return out
