"""Fast JSON responses, opaque cursors and CSV exports."""

from __future__ import annotations

import base64
import binascii
import csv
import io
import re
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import orjson
from fastapi import Request
from starlette.responses import Response, StreamingResponse

from creep.domain.errors import ValidationError


def json_response(
    data: Any, status_code: int = 200, headers: dict[str, str] | None = None
) -> Response:
    """orjson straight to bytes: the models in schemas.py document what these dicts hold."""
    return Response(
        orjson.dumps(data), status_code=status_code, media_type="application/json",
        headers=headers,
    )


def written_response(
    data: Any, replayed: bool, headers: dict[str, str] | None = None
) -> Response:
    """The answer of a create the client may send again by an id it picked: 201 when this
    request wrote it, else (a replay: nothing written) 200 with `Idempotent-Replayed: true`,
    as every creep route that replays answers one."""
    if replayed:
        return json_response(data, 200, {**(headers or {}), "Idempotent-Replayed": "true"})
    return json_response(data, 201, headers)


class RawJSONResponse(Response):
    """A JSON body already serialised, with its headers already encoded: the hot routes skip
    Response's header building (a Mapping walked, lower-cased and encoded per request)."""

    media_type = "application/json"

    def __init__(
        self, body: bytes, status_code: int, headers: list[tuple[bytes, bytes]]
    ) -> None:
        self.status_code = status_code
        self.background = None
        self.body = body
        self.raw_headers = [
            *headers, (b"content-length", str(len(body)).encode()),
            (b"content-type", b"application/json"),
        ]


def encode_cursor(raw: str) -> str:
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(cursor: str, valid: Callable[[str], bool], field: str = "cursor") -> str:
    """The store's cursor inside an opaque one; ValidationError if it was not issued here."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raw = ""
    if not raw or not valid(raw):
        raise ValidationError.single(field, "is not a cursor this server issued")
    return raw


def encode_ordered_cursor(raw: str, order: str | None) -> str:
    """A cursor of a list that has more than one order: one of any order but the default
    (None) names it (`<order>~<raw>`), so it is not taken for a cursor of the other."""
    return encode_cursor(raw if order is None else f"{order}~{raw}")


def decode_ordered_cursor(
    cursor: str, valid: Callable[[str], bool], order: str | None, field: str = "cursor"
) -> str:
    """The store's cursor inside one that `encode_ordered_cursor` made for this `order`; a
    cursor of another order is a ValidationError (its page would continue the wrong way)."""
    tagged = decode_cursor(cursor, lambda raw: valid(raw.partition("~")[2] or raw), field)
    tag, sep, raw = tagged.partition("~")
    if (tag if sep else None) != order:
        raise ValidationError.single(field, "was issued for another order: pass the same "
                                            "`order` as the page it came from")
    return raw if sep else tagged


_EVENT_CURSOR = re.compile(r"^[0-9]{1,18}(\.[0-9]{1,18})?$")


def check_event_cursor(cursor: str | None, field: str) -> str | None:
    """Event cursors are numbers a database column can hold; anything else is a 422."""
    if cursor is not None and not _EVENT_CURSOR.fullmatch(cursor):
        raise ValidationError.single(field, "is not a cursor this server issued")
    return cursor


@contextmanager
def cursor_named(field: str) -> Iterator[None]:
    """Inside: a store's refusal of an event cursor (a well-formed number it did not issue,
    e.g. one of the other backend), which the stores call `cursor`, names the parameter the
    caller sent it in (`after`, `Last-Event-ID`)."""
    try:
        yield
    except ValidationError as exc:
        raise ValidationError(
            [(field if name == "cursor" else name, rule) for name, rule in exc.errors]
        ) from None


def aware(value: datetime | None, field: str) -> datetime | None:
    """A timestamp filter: it must carry a time zone and be representable in UTC."""
    if value is None:
        return None
    if value.tzinfo is None:
        raise ValidationError.single(field, "must carry a time zone")
    try:
        return value.astimezone(UTC)
    except (OverflowError, ValueError):
        raise ValidationError.single(field, "is out of range") from None


def valid_sortable_cursor(raw: str) -> bool:
    """`<created>/<id>` as both stores issue them: microseconds or an ISO timestamp."""
    created, sep, key = raw.partition("/")
    if not sep or not key:
        return False
    if created.isascii() and created.isdecimal():
        return len(created) <= 18
    try:
        datetime.fromisoformat(created)
    except ValueError:
        return False
    return True


def wants_csv(request: Request, format_: str | None) -> bool:
    if format_ is not None:
        return format_ == "csv"
    accept = request.headers.get("accept", "")
    return "text/csv" in accept and "application/json" not in accept


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, (dict, list)):
        return orjson.dumps(value).decode()
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def csv_stream(
    columns: list[str], rows: Iterable[dict[str, Any]], filename: str
) -> StreamingResponse:
    """Stream rows as CSV (RFC 4180), a header line first; nested values as JSON."""

    def generate() -> Iterator[str]:
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\r\n")
        writer.writerow(columns)
        for row in rows:
            writer.writerow([_cell(row.get(c)) for c in columns])
            if buf.tell() > 32_768:
                yield buf.getvalue()
                buf.seek(0)
                buf.truncate()
        yield buf.getvalue()

    return StreamingResponse(
        generate(), media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )
