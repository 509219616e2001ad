"""Text every backend can store: PostgreSQL refuses NUL in text and jsonb (SQLite would keep
it), and no database takes a lone surrogate. Checked at the edge, so a bad value is a
validation error naming its field on every backend, never a storage error. The same walk
checks JSON numbers: creep writes JSON with orjson, which takes integers of at most 64 bits
(a body the API's model parses may hold any) and writes NaN and infinities as null (the
standard library and Pydantic read NaN, Infinity and 1e400 so)."""

from __future__ import annotations

import json
import math
from decimal import Decimal
from typing import Any

import orjson

NUL_RULE = "must not contain NUL characters (\\u0000)"
SURROGATE_RULE = "must be valid Unicode (no unpaired surrogates)"
INT_RULE = "must be an integer of at most 64 bits (-2**63 to 2**64 - 1)"
FINITE_RULE = "must be a finite number (no NaN or Infinity, at most 1.8e308 in size)"
_INT_MIN, _INT_END = -(2**63), 2**64


def bad_text(value: str) -> str | None:
    """Why a string cannot be stored as text on every backend, or None."""
    if "\x00" in value:
        return NUL_RULE
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return SURROGATE_RULE
    return None


def find_bad_text(data: Any, path: str = "") -> tuple[str, str] | None:
    """The first string (key or value) in `data` that no database can store, or number
    that cannot be written as JSON (an integer past 64 bits, NaN or an infinity): (path,
    rule)."""
    if isinstance(data, str):
        rule = bad_text(data)
        return (path, rule) if rule else None
    if type(data) is int:
        return None if _INT_MIN <= data < _INT_END else (path or "(top level)", INT_RULE)
    if isinstance(data, float):
        return None if math.isfinite(data) else (path or "(top level)", FINITE_RULE)
    if isinstance(data, dict):
        for key, value in data.items():
            sub = f"{path}.{key}" if path else str(key)
            if isinstance(key, str) and (rule := bad_text(key)):
                return (path or "(top level)", f"key {rule}")
            found = find_bad_text(value, sub)
            if found:
                return found
    if isinstance(data, (list, tuple, set, frozenset)):
        for i, value in enumerate(data):
            found = find_bad_text(value, f"{path}[{i}]")
            if found:
                return found
    return None


def may_hold_nul(json_text: bytes) -> bool:
    """Whether JSON text may hold a NUL character (escaped as \\u0000; a literal backslash
    before "u0000" also matches, and find_bad_text then decides)."""
    return b"\\u0000" in json_text


#: A JSON text's bytes as "0" for a digit or a minus sign, "x" for any other.
_DIGIT_RUNS = bytes(0x30 if chr(i) in "0123456789-" else 0x78 for i in range(256))
_WIDE_RUN = b"0" * 20


def may_hold_wide_int(json_text: bytes) -> bool:
    """Whether JSON text may hold an integer beyond 64 bits, which orjson reads as a float
    (2**64 as 1.8446744073709552e+19): a run of 20 digits, or of a minus and 19 (-2**63 has
    19). A long string of digits or decimal matches too, and a parser that keeps integers
    (the standard library's, Pydantic's) then decides. One C pass, no regex (~10x)."""
    return _WIDE_RUN in json_text.translate(_DIGIT_RUNS)


def loads_exact(text: str | bytes) -> Any:
    """JSON text as orjson reads it (NaN, Infinity, 1e400 or bad text: its JSONDecodeError,
    a ValueError), except that an integer beyond 64 bits stays an integer: orjson reads it
    as a float, sent on as another number; as itself it is refused, named."""
    value = orjson.loads(text)
    raw = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else text
    if not may_hold_wide_int(raw):
        return value
    try:  # valid JSON (orjson read it), nested at most 1024 deep
        return json.loads(text)
    except RecursionError:
        raise ValueError("JSON nested too deep") from None


#: Deepest nesting of lists and objects a stored JSON value may have (orjson stops at 254).
MAX_JSON_DEPTH = 200
DEPTH_RULE = f"must not nest lists and objects more than {MAX_JSON_DEPTH} deep"


def too_deep(data: Any, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether lists and objects in `data` nest deeper than `limit` (walked without
    recursion: a hostile body may nest thousands deep)."""
    level: list[Any] = [data]
    depth = 0
    while level:
        containers = [v for v in level if isinstance(v, (dict, list, tuple))]
        if not containers:
            return False
        depth += 1
        if depth > limit:
            return True
        level = [x for c in containers for x in (c.values() if isinstance(c, dict) else c)]
    return False


def find_unwritable(data: Any, path: str = "") -> tuple[str, str] | None:
    """As find_bad_text, and nesting deeper than MAX_JSON_DEPTH: the API writes a task's
    JSON inside a page (a claim's nests it 4 deeper), and orjson stops at 254 levels. Any
    value orjson writes as itself passes otherwise (unlike find_bad_json: a Decimal, a
    datetime)."""
    if too_deep(data):
        return (path or "(top level)", DEPTH_RULE)
    return find_bad_text(data, path)


def may_be_unwritable(json_text: bytes, data: Any, *, finite: bool = False) -> bool:
    """Whether `data` (whose orjson text is `json_text`) may hold what find_unwritable
    refuses: a NUL escape in the text, nesting past MAX_JSON_DEPTH, or a float NaN or
    infinity (unless `finite`: `data` is known to hold none, e.g. orjson read it from JSON
    text, refusing them). Cheap: most values need no walk, one with many brackets is
    measured by orjson itself (its C walk is ~20x a Python one), and orjson writes NaN as
    null: only a value whose text holds null may hold one, and it does only if that text
    reads back as another value (a C compare, ~4x faster than a walk; a tuple or a Decimal
    reads back otherwise too, and the walk then decides)."""
    return may_hold_nul(json_text) or (
        len(json_text) > 2 * MAX_JSON_DEPTH
        and json_text.count(b"[") + json_text.count(b"{") > MAX_JSON_DEPTH
        and _past_depth(data)
    ) or (not finite and b"null" in json_text and orjson.loads(json_text) != data)


#: The most levels of lists and objects orjson writes.
_ORJSON_LEVELS = 254


def _past_depth(data: Any) -> bool:
    """Whether `data` nests past MAX_JSON_DEPTH, asked of orjson: wrapped in as many lists
    as it may nest beyond that, it fails at its own limit exactly then. Any other failure
    (a value it does not write) says True: the walk decides."""
    wrapped = data
    for _ in range(_ORJSON_LEVELS - MAX_JSON_DEPTH):
        wrapped = [wrapped]
    try:
        orjson.dumps(wrapped, default=json_default)
    except TypeError:  # orjson.JSONEncodeError included
        return True
    return False


def json_default(value: Any) -> Any:
    """orjson's `default` for task JSON: Decimals as text, sets and tuples as lists."""
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def find_bad_json(data: Any, path: str = "") -> tuple[str, str] | None:
    """As find_bad_text, and the first value that is not plain JSON: an object key that is
    not a string, a number that is not finite, or anything but a string, number, boolean,
    null, list or object (orjson would fail on it, or store NaN as null); or nesting deeper
    than MAX_JSON_DEPTH."""
    if too_deep(data):
        return (path or "(top level)", DEPTH_RULE)
    return _not_json(data, path) or find_bad_text(data, path)


def _not_json(data: Any, path: str) -> tuple[str, str] | None:
    where = path or "(top level)"
    if isinstance(data, dict):
        for key, value in data.items():
            if not isinstance(key, str):
                return (where, "object keys must be strings")
            found = _not_json(value, f"{path}.{key}" if path else key)
            if found:
                return found
        return None
    if isinstance(data, (list, tuple)):
        for i, value in enumerate(data):
            found = _not_json(value, f"{path}[{i}]")
            if found:
                return found
        return None
    if isinstance(data, float):
        return None if math.isfinite(data) else (where, FINITE_RULE)
    if data is None or isinstance(data, (str, int)):
        return None
    return (where, f"must be JSON (a {type(data).__name__} is not)")
