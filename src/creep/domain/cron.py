"""Cron math through cronsim (a maintained library; no hand-written cron arithmetic here).

Expressions have 5 fields (minute hour day-of-month month day-of-week) or 6 with a leading
seconds field. They are evaluated in an IANA time zone (default UTC) with cronsim's DST rules:
a local time skipped by a spring-forward gap fires at the first instant after the gap, and a
local time that occurs twice in the autumn fires once (at its first occurrence).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError

from creep.domain.errors import ValidationError

#: Upper bound on the expression length (the seed's column is varchar(255)).
MAX_CRON_LENGTH = 255


def validate_cron(expr: object, field: str = "cron_expr") -> str:
    """Return the normalised expression or raise ValidationError naming the field and rule."""
    if not isinstance(expr, str) or not expr.strip():
        raise ValidationError.single(field, "must be a non-empty cron expression")
    text = " ".join(expr.split())
    if len(text) > MAX_CRON_LENGTH:
        raise ValidationError.single(field, f"must be at most {MAX_CRON_LENGTH} characters")
    if len(text.split(" ")) not in (5, 6):
        raise ValidationError.single(
            field,
            "must have 5 fields (minute hour day-of-month month day-of-week) "
            "or 6 with a leading seconds field",
        )
    try:
        CronSim(text, datetime(2000, 1, 1, tzinfo=UTC))
    except CronSimError as exc:
        raise ValidationError.single(field, f"is not a valid cron expression: {exc}") from None
    return text


def validate_timezone(name: object, field: str = "timezone") -> str:
    if not isinstance(name, str) or not name:
        raise ValidationError.single(field, "must be an IANA time zone name such as 'UTC'")
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValidationError.single(field, f"unknown IANA time zone {name!r}") from None
    return name


def next_cron(expr: str, after: datetime, timezone: str = "UTC") -> datetime:
    """The first firing time strictly after `after`, as an aware UTC datetime."""
    zone = ZoneInfo(timezone)
    after_utc = after.astimezone(UTC)
    start = after_utc.astimezone(zone)
    if start.replace(fold=0).utcoffset() != start.replace(fold=1).utcoffset():
        # Inside a repeated (fall-back) hour: cronsim starts from a naive local time and
        # would lose which occurrence we are at, so start before the hour and walk forward.
        start = (after_utc - timedelta(hours=2)).astimezone(zone)
    it = CronSim(expr, start)
    nxt: datetime = next(it)
    while nxt <= after_utc:  # an aware comparison across zones: exact, fold included
        nxt = next(it)
    return nxt.astimezone(UTC)
