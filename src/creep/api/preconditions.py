"""If-Match on the routes that change a versioned resource (schedules, assets): the version
the client read, as the ETag of its GET gave it."""

from __future__ import annotations

from creep.api.problems import Problem
from creep.domain.errors import ValidationError


def parse_if_match(
    value: str | None, *, read_from: str, what: str, field: str = "version"
) -> int:
    """The version If-Match names (`"3"`, `W/"3"` or `3`). Missing: a 428 that says where the
    version comes from (`read_from`, e.g. "GET /v1/assets/{id}"); not a version: a 422 on
    If-Match saying `what` it must be (e.g. "an asset version")."""
    if value is None:
        raise Problem(428, "Precondition required",
                      f"send If-Match: <{field}> (the ETag of {read_from})",
                      type_="precondition-required")
    raw = value.strip()
    raw = raw[2:] if raw.startswith("W/") else raw
    raw = raw.strip('"')
    if not raw.isdigit() or len(raw) > 12:
        raise ValidationError.single("If-Match", f'must be {what} such as "3"')
    return int(raw)
