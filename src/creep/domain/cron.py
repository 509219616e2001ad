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

from collections.abc import Iterator
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
    local = after_utc.astimezone(zone)  # fold=1 on the second pass of a repeated span
    naive = local.replace(tzinfo=None)
    first: datetime | None = None
    for candidate in _walk(expr, naive):
        instants = _instants(candidate, zone, once)
        # Before the second pass of a repeated span (handled below) only first passes count.
        later = [i for i in (instants if local.fold == 1 else instants[:1]) if i > after_utc]
        if later:
            first = later[0]
            break
    assert first is not None  # a valid expression matches again (cronsim raises otherwise)
    first_offset = local.replace(fold=0).utcoffset() or timedelta(0)
    second_offset = local.replace(fold=1).utcoffset() or timedelta(0)
    shift = first_offset - second_offset
    if once or local.fold == 1 or shift <= timedelta(0):
        return first
    # On the first pass of a repeated span: every local time of the span also has a second
    # pass, after the whole first pass. A first-pass answer wins; else the span's first
    # matching local time, on its second pass, comes before anything past the span.
    transition = _transition(after_utc, after_utc + shift, zone)
    if first < transition:
        return first
    span_start = (transition + second_offset).replace(tzinfo=None)
    for candidate in _walk(expr, span_start):
        if candidate < span_start + shift:
            return candidate.replace(tzinfo=zone, fold=1).astimezone(UTC)
        break
    return first


def _walk(expr: str, start: datetime) -> Iterator[datetime]:
    """The expression's naive local wall-clock times from `start` on (cronsim in a zone
    without shifts)."""
    for candidate in CronSim(expr, (start - timedelta(seconds=1)).replace(tzinfo=UTC)):
        yield candidate.replace(tzinfo=None)


def _transition(lo: datetime, hi: datetime, zone: ZoneInfo) -> datetime:
    """The instant in (lo, hi] where the zone's offset changes from lo's to hi's."""
    offset = hi.astimezone(zone).utcoffset()
    while hi - lo > timedelta(microseconds=1):
        mid = lo + (hi - lo) / 2
        if mid.astimezone(zone).utcoffset() == offset:
            hi = mid
        else:
            lo = mid
    return hi


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
    return [_transition(local.replace(tzinfo=zone, fold=1).astimezone(UTC), first, zone)]
