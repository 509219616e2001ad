"""SqliteDialect.bulk_insert binds a column once when every row holds the same value: what is
stored (values, their types, NULLs, the row order) is what one bind per row stores."""

from __future__ import annotations

import sqlite3
from typing import Any

from creep.storage.asset_dialect import SqliteDialect


def _stored(rows: list[tuple[Any, ...]], fixed: list[tuple[str, Any]]) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(":memory:", isolation_level=None)
    conn.execute("CREATE TABLE t (seq INTEGER PRIMARY KEY, a, b, c, d)")
    SqliteDialect().bulk_insert(conn, "t", ("a", "b", "c"), rows, fixed=fixed)
    return conn.execute(
        "SELECT a, typeof(a), b, typeof(b), c, typeof(c), d FROM t ORDER BY seq"
    ).fetchall()


def test_constant_columns_store_what_per_row_binds_store() -> None:
    rows = [("x", None, 1), ("y", None, 1), ("z", None, 1)]
    assert _stored(rows, [("d", 7)]) == [
        ("x", "text", None, "null", 1, "integer", 7),
        ("y", "text", None, "null", 1, "integer", 7),
        ("z", "text", None, "null", 1, "integer", 7),
    ]


def test_equal_values_of_different_types_are_bound_per_row() -> None:
    rows: list[tuple[Any, ...]] = [("k", 1, 1.0), ("k", True, 1), ("k", 1, 1)]
    assert [r[:6] for r in _stored(rows, [])] == [
        ("k", "text", 1, "integer", 1.0, "real"),
        ("k", "text", 1, "integer", 1, "integer"),
        ("k", "text", 1, "integer", 1, "integer"),
    ]


def test_every_column_constant_and_chunks_of_many_rows() -> None:
    rows = [("same", 2, None)] * 1200 + [("other", 2, None)]
    stored = _stored(rows, [])
    assert len(stored) == 1201
    assert stored[0] == ("same", "text", 2, "integer", None, "null", None)
    assert stored[-1][0] == "other"
