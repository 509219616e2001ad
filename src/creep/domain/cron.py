"""Cron math through cronsim (a maintained library; no hand-written cron arithmetic here).

Expressions have 5 fields (minute hour day-of-month month day-of-week) or 6 with a leading
seconds field. They are evaluated in an IANA time zone (default UTC): a local time skipped by
a spring-forward gap fires at the first instant after the gap, and a local time that occurs
twice in the autumn fires once (at its first occurrence). cronsim walks the expression in
local wall-clock time; the local times are mapped to instants here, through zoneinfo, because
cronsim's own mapping assumes one-hour shifts (Australia/Lord_Howe shifts by 30 minutes, and
cronsim skipped its 02:30, a time that exists).
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
    after_utc = after.astimezone(UTC)
    if timezone == "UTC":
        it = CronSim(expr, after_utc)
        while (nxt := next(it)) <= after_utc:
            pass
        return nxt.astimezone(UTC)
    zone = ZoneInfo(timezone)
    fields = expr.split()
    # cronsim's (Debian cron's) rule: an expression at a fixed local time (minute and hour
    # given, 5 fields) fires once per local time, after the gap if it falls in one; any other
    # fires at every real instant whose local time matches (both passes of a repeated hour,
    # none in a gap).
    once = len(fields) == 5 and not fields[0].startswith("*") and not fields[1].startswith("*")
    local = after_utc.astimezone(zone)
    start = local.replace(tzinfo=None) - timedelta(seconds=1)
    if local.replace(fold=0).utcoffset() != local.replace(fold=1).utcoffset():
        # Inside a repeated hour: earlier local times have a second pass after `after`.
        start -= timedelta(hours=3)
    it = CronSim(expr, start.replace(tzinfo=UTC))  # a walk in local wall-clock time
    best: datetime | None = None
    while True:
        instants = _instants(next(it).replace(tzinfo=None), zone, once)
        for instant in instants:
            if instant > after_utc and (best is None or instant < best):
                best = instant
        # Later local times map to later instants, but for a second pass of an earlier one.
        if instants and instants[0] > after_utc and best is not None:
            return best


def _instants(local: datetime, zone: ZoneInfo, once: bool) -> list[datetime]:
    """The instants a naive local time fires at, in order: itself; both passes of a time that
    occurs twice (only the first when `once`); none in a spring-forward gap, or when `once`
    the first instant after the gap."""
    first = local.replace(tzinfo=zone, fold=0).astimezone(UTC)
    if first.astimezone(zone).replace(tzinfo=None) == local:
        second = local.replace(tzinfo=zone, fold=1).astimezone(UTC)
        return [first] if once or second == first else [first, second]
    if not once:
        return []
    # In the gap: fold=1 reads it with the offset after the shift (an instant before the
    # transition), fold=0 with the one before (after it). The transition lies between.
    lo = local.replace(tzinfo=zone, fold=1).astimezone(UTC)
    hi = first
    after_offset = hi.astimezone(zone).utcoffset()
    while hi - lo > timedelta(seconds=1):
        mid = lo + (hi - lo) / 2
        if mid.astimezone(zone).utcoffset() == after_offset:
            hi = mid
        else:
            lo = mid
    return [hi.replace(microsecond=0)]
