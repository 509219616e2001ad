"""Injected time: engine code asks a Clock, tests freeze and advance it."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from typing import Protocol

#: What a stored instant must be: aware, and a UTC time of years 1 to 9999 (SQLite keeps
#: microseconds since the epoch, PostgreSQL a timestamptz; neither reads anything else back).
INSTANT_RULE = "must be a timezone-aware timestamp between years 1 and 9999 in UTC"


def storable_instant(value: object) -> bool:
    """Whether `value` is an aware datetime both backends can store and read back."""
    if not isinstance(value, datetime) or value.tzinfo is None:
        return False
    try:
        value.astimezone(UTC)
    except (OverflowError, ValueError):
        return False
    return True


class Clock(Protocol):
    def now(self) -> datetime: ...


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)


class FrozenClock:
    """A clock that moves only when told to."""

    def __init__(self, start: datetime | None = None) -> None:
        self._now = start or datetime(2026, 1, 1, tzinfo=UTC)
        self._lock = threading.Lock()

    def now(self) -> datetime:
        with self._lock:
            return self._now

    def advance(self, seconds: float = 0.0, **kwargs: float) -> datetime:
        with self._lock:
            self._now += timedelta(seconds=seconds, **kwargs)
            return self._now

    def set(self, when: datetime) -> None:
        with self._lock:
            self._now = when
